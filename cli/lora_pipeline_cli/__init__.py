"""`lora-pipeline`: the command line for validating, uploading, following and downloading LoRA runs."""
