"""Process launch: rank discovery for Slurm, OpenMPI, torchrun/DeepSpeed, and one process."""
