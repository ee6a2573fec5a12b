"""Adapters from the domain to AWS services (boto3 lives here and nowhere else in the package)."""
