"""Answering predictions with each tenant's active adapter on the shared frozen encoder."""
