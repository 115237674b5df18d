"""The baseline for bench/webhook.py: one POST route that answers an empty TwiML <Response/>, nothing else.

Served exactly like Vereda (`gunicorn -w 2 --threads 4 'bare_app:create_app()'` from this folder), it measures
what Flask, gunicorn and the load generator cost on this machine, so the benchmark can report Vereda's
throughput as a ratio of it.
"""

from __future__ import annotations

from flask import Flask, Response

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def create_app() -> Flask:
    """A Flask app with the webhook's path and answer, and no work behind it."""
    app = Flask(__name__)

    @app.post("/webhooks/twilio")
    def twilio_inbound() -> Response:
        return Response(EMPTY_TWIML, mimetype="text/xml")

    return app
