"""The contract package: one registry the type checker and the wire agree on."""

from __future__ import annotations

import re
from typing import get_args

from genplane.contract.errors import ERRORS, ErrorName, failure_fields


def test_the_error_name_literal_is_the_registry() -> None:
    # mypy checks every raise against ErrorName; the wire reads ERRORS. They must be one list.
    assert set(get_args(ErrorName)) == set(ERRORS)
    assert len(get_args(ErrorName)) == len(ERRORS)


def test_codes_are_unique_and_shaped() -> None:
    # The contract gives a key of another region the invalid-key code; no other code is shared.
    codes = [spec.code for spec in ERRORS.values() if spec.name != "bse_region_mismatch"]
    assert len(set(codes)) == len(codes)
    assert ERRORS["bse_region_mismatch"].code == ERRORS["bse_invalid_api_key"].code
    assert all(re.fullmatch(r"BSE[1-5]\d{3}", code) for code in codes), codes


def test_a_failed_record_names_its_error_by_code_and_name() -> None:
    fields = failure_fields("Every provider failed.", "bse_all_providers_failed")
    assert fields == {
        "generation_error": "Every provider failed.",
        "generation_error_code": "BSE4003",
        "generation_error_name": "bse_all_providers_failed",
    }
    assert failure_fields(None, None) == {
        "generation_error": None, "generation_error_code": None, "generation_error_name": None,
    }


def test_the_spec_is_stored_and_sent_under_its_own_names() -> None:
    # A field added to GenerationSpec reaches the row and the provider job with no copying code:
    # the row has a column of each name, and the job and the checked request are specs.
    from genplane.contract.spec import SPEC_FIELDS, GenerationSpec
    from genplane.db.models import Generation
    from genplane.generations.request import GenerationRequest
    from genplane.providers.base import ProviderJob

    columns = set(Generation.__table__.columns.keys())
    assert {f.name for f in SPEC_FIELDS} <= columns
    assert issubclass(ProviderJob, GenerationSpec) and issubclass(GenerationRequest, GenerationSpec)
