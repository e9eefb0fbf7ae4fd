"""Two-way sync of Microsoft 365 (Outlook) contacts and Salesforce Contacts.

``model`` (the canonical Contact), ``policy`` (what syncs in which direction, who wins), ``mapping`` (each side's
JSON <-> Contact) and ``planner`` (the decision rules) do no I/O. ``ports`` holds the records and interfaces the rest
shares; ``adapters`` implement them for Azure Storage, Graph and Salesforce. ``engine`` and ``reconcile`` read through
the ports, plan, and carry the plans out; ``triggers`` are the Azure Functions blueprints and ``bootstrap`` builds
the clients they use. Imports point one way (triggers -> reconcile/engine -> planner/adapters -> ports -> model).
"""
