"""Two-way sync of Microsoft 365 (Outlook) contacts and Salesforce Contacts.

Core (pure): ``model`` (canonical Contact, fingerprint), ``policy`` (directions, conflict/delete policies, field map,
circuit breaker), ``mapping`` (Graph / Salesforce JSON <-> Contact), ``planner`` (decision rules, no I/O).
Shell: ``engine`` (one contact) and ``reconcile`` (one mailbox) execute plans through ``ports``; ``adapters`` implement
the ports (memory, Azure Tables, Graph, Salesforce); ``triggers`` are the Azure Functions blueprints.
"""
