"""Domain package of sdxl-lora-pipeline: dataset and Kohya config rules, plans, events, S3 layout.

Shared by every Lambda function (as a layer), the training container and the CLI. Nothing in the rule
modules talks to AWS: files arrive through `dataset_source.DatasetSource`.
"""
