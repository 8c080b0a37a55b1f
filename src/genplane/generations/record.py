"""The contract's generation record, built from a row in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from genplane.clock import iso
from genplane.contract.errors import failure_fields
from genplane.contract.status import GenerationStatus
from genplane.db.models import Generation


def output_urls(gen: StoredGeneration) -> list[str] | None:
    if not gen.output_files:
        return None
    return [f["url"] for f in gen.output_files]


#: A generation as stored: the ORM row, or a Core row of the same columns (the hot reads).
StoredGeneration = Generation | Row[Any]


def to_record(gen: StoredGeneration) -> dict[str, Any]:
    record: dict[str, Any] = {
        "account_id": gen.account_id,
        "generation_id": gen.id,
        "model_identifier": gen.model_identifier,
        "generation_status": gen.status,
        "generation_provider_order": list(gen.provider_order),
        "generation_provider_used": gen.provider_used,
        "generation_prediction_id": gen.prediction_id,
        "generation_prompt": gen.prompt,
        "generation_ratio": gen.ratio,
        "generation_output_format": gen.output_format,
        "generation_output_number": gen.output_number,
        "generation_input_file": gen.input_file,
        "generation_output_file": output_urls(gen),
        # Not in the contract: how many of the outputs asked were delivered, and charged for.
        "generation_output_delivered": gen.output_delivered,
        "generation_created_at": iso(gen.created_at),
        "generation_started_at": iso(gen.started_at),
        "generation_completed_at": iso(gen.completed_at),
        "generation_metrics_total_time": gen.metrics_total_time,
        "generation_metrics_predict_time": gen.metrics_predict_time,
    }
    if gen.input_file_last_content is not None:
        record["generation_input_file_last_content"] = gen.input_file_last_content
    record.update(gen.specific or {})
    if gen.model_type == "video":
        record["generation_duration"] = gen.duration
        record["generation_resolution"] = gen.resolution
        record["generation_generate_audio"] = gen.generate_audio
    if gen.status == GenerationStatus.FAILED:
        record.update(failure_fields(gen.error, gen.error_code))
        if gen.provider_errors:
            record["provider_errors"] = gen.provider_errors
    return record


def event_data(gen: Generation, credits_refunded: bool | None = None) -> dict[str, Any]:
    """``webhook_data`` of a generation event, as the contract lists it."""
    data: dict[str, Any] = {
        "account_id": gen.account_id,
        "model_identifier": gen.model_identifier,
        "generation_id": gen.id,
        "generation_status": gen.status,
        "generation_provider_used": gen.provider_used,
        "generation_prediction_id": gen.prediction_id,
    }
    if gen.status == GenerationStatus.SUCCEEDED:
        data["generation_output_file"] = output_urls(gen)
        data["generation_output_delivered"] = gen.output_delivered
    if gen.status == GenerationStatus.FAILED:
        data.update(failure_fields(gen.error, gen.error_code))
    if credits_refunded is not None:
        data["credits_refunded"] = credits_refunded
    return data
