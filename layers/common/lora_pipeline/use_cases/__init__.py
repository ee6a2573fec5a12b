"""One module per Lambda function: what it decides, against the ports in `lora_pipeline.ports` (ingest,
cancel) or an injected boto3 S3 client (validate, unpack, salvage, notify). The handlers in
`functions/<name>/app.py` parse the event, wire up the adapters and call these.

A handler imports only its own use case; what a use case needs only while it runs is imported there, so a
function's cold start loads only its part of the domain (the validation rules alone are most of it).
"""
