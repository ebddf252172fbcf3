"""Evaluation metrics and forecast scoring (WeatherBench 2 conventions)."""
