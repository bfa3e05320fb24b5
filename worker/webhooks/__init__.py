"""The webhook delivery worker: a Celery process of its own (`celery -A worker.webhooks.main
worker`, on the webhook queue), loading no model, that signs and POSTs the events the GPU
workers and the API record (db/deliveries.py's outbox). main.py is its entrypoint; deliver.py
the tasks and the dispatcher; gate.py the fair shares and circuit breakers; http.py one POST;
retry_schedule.py when to try again. Nothing in the GPU worker imports this package."""
