"""Generated gRPC stubs of the Salesforce Pub/Sub API (``eventbus.v1.PubSub``).

``pubsub_api.proto`` is written from the published interface (see its header); ``pubsub_api_pb2*.py`` are generated
by ``scripts/gen_pubsub_stubs.sh`` and committed. Import them as
``from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2, pubsub_api_pb2_grpc``.
"""
