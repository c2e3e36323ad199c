"""The CDS services this product offers, as served by discovery (GET /cds-services)."""

from __future__ import annotations

from cds_hooks.prefetch import PREFETCH_TEMPLATES
from cds_hooks.protocol import ServiceDescription

_ABOUT = ("Detects inadequate first-line drug trials and skipped treatment steps in treatment-resistant "
          "neuropathic pain, and suggests the next guideline step.")

SERVICES: dict[str, ServiceDescription] = {
    service.id: service for service in [
        ServiceDescription(
            hook="order-select", id="neuropathic-pain-order-select",
            title="Neuropathic pain: treatment steps at order selection",
            description=f"{_ABOUT} Fires when an opioid or other escalation is selected.",
            prefetch=PREFETCH_TEMPLATES),
        ServiceDescription(
            hook="order-sign", id="neuropathic-pain-order-sign",
            title="Neuropathic pain: treatment steps at order signing",
            description=f"{_ABOUT} Fires when orders are signed.",
            prefetch=PREFETCH_TEMPLATES),
        ServiceDescription(
            hook="patient-view", id="neuropathic-pain-patient-view",
            title="Neuropathic pain: treatment review on chart open",
            description=f"{_ABOUT} Reviews the active medication list when the chart is opened.",
            prefetch=PREFETCH_TEMPLATES),
    ]
}
