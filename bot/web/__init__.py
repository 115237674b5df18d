"""HTTP: webhooks and health; each view verifies, parses, calls one service and answers."""
