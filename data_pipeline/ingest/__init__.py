"""One reader per source format, each returning canonical arrays plus variable metadata."""
