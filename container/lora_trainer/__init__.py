"""The program inside the training image: SageMaker entrypoint, Kohya command builder, smoke trainer."""
