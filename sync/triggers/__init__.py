"""Blueprints of the function app: parse the trigger's input, call the core, translate the outcome.

Modules (function names and routes are a contract, see README and tests/functions):
    graph       graph_notifications (POST graph/notifications), graph_lifecycle (POST graph/lifecycle),
                subscriptions_timer (%SUBSCRIPTION_SCHEDULE%)
    salesforce  salesforce_events (POST salesforce/events, HMAC), salesforce_cdc_pull (%CDC_PULL_SCHEDULE%)
    worker      contact_worker (queue contact-changes)
    reconcile   reconcile_start (POST reconcile), reconcile_status (GET reconcile/{job}),
                reconcile_timer (%RECONCILE_SCHEDULE%), mailbox_reconciler (queue reconcile)
    review      review_list (GET review), review_decide (POST review/{id})
    ops         ops_jobs (GET ops/jobs), ops_poison_list (GET ops/poison/{queue}), ops_poison_act
                (POST ops/poison/{queue}/{id}), ops_subscriptions (POST ops/subscriptions): what the ops CLI uses
    status      status_page (GET status)
    errors      the one place typed errors become HTTP statuses and queue dispositions

Importing these modules imports no SDK: every client comes from ``sync.bootstrap.current()`` on first use.
"""

from __future__ import annotations

BLUEPRINT_MODULES = ("graph", "salesforce", "worker", "reconcile", "review", "ops", "status")
