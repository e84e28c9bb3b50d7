"""The FHIR R4 read API: Patient read and search, PDQm, PIXm, $everything (the resources are
built by consumers/fhir_read_api.py)."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from consumers import fhir_read_api
from consumers.delivery_api.access import Access
from foundation.api_auth import Client
from streams import demographic_search


def router(access: Access) -> APIRouter:
    r = APIRouter()
    service = access.service

    # ---- FHIR R4 read API (consumers/fhir_read_api.py) ----------------------------------------
    def fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status, media_type=fhir_read_api.FHIR_JSON)

    def fhir_base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    def fhir_reader(client: Client) -> None:
        if not (client.has("auditor") or client.has("subscriber")):
            raise HTTPException(403, "this client lacks the subscriber or auditor role")

    async def fhir_patient_record(client: Client, person_id: str) -> dict[str, Any] | None:
        """The record as this client may read it through FHIR, None if absent or out of scope."""
        fhir_reader(client)
        rec = await service.records.record(person_id)
        return access.readable(client, rec) if rec is not None else None

    def fhir_not_found(person_id: str) -> JSONResponse:
        # Absent and out of scope look alike: an id reveals nothing.
        return fhir(fhir_read_api.operation_outcome("not-found", f"no Patient/{person_id} for this client"), 404)

    @r.get("/fhir/metadata")
    async def fhir_metadata(request: Request) -> JSONResponse:
        return fhir(fhir_read_api.capability_statement(fhir_base(request), "1"))

    def find_by_identifier(identifier: str) -> dict[str, list[str]]:
        system, _, value = identifier.rpartition("|")
        if system == fhir_read_api.NHS_NUMBER_SYSTEM:
            return access.find_persons(value, "", "")
        return access.find_persons("", identifier, "")

    def find_by_demographics(query: demographic_search.Query) -> dict[str, float]:
        """Person -> the best match score of its records (PDQm), at most 20 persons."""
        graph = service.graph()
        ranked = demographic_search.rank(query, graph.demographics_in_blocks(demographic_search.blocks_for(query)),
                                         service.linkage_parameters())
        persons = graph.persons_of([k for k, _ in ranked])
        best: dict[str, float] = {}
        for key, score in ranked:
            if key in persons and persons[key] not in best:
                best[persons[key]] = score
        return dict(list(best.items())[:20])

    async def visible_records(client: Client, persons: Any) -> list[dict[str, Any]]:
        records = [r for r in [await service.records.record(p) for p in persons] if r is not None]
        return [v for v in (access.readable(client, r) for r in records) if v is not None]

    async def by_identifier(client: Client, identifier: str, action: str, why: str | None
                            ) -> list[dict[str, Any]] | JSONResponse:
        """The records this client may read of the person(s) with this identifier, audited; a 400
        OperationOutcome when the identifier is not <system>|<value>."""
        system, _, value = identifier.rpartition("|")
        if not system or not value:
            return fhir(fhir_read_api.operation_outcome(
                "required", "an identifier is <system>|<value> (NHS number or a local identifier)"), 400)
        visible = await visible_records(client, await asyncio.to_thread(find_by_identifier, identifier))
        await access.audited(client, action, [r["person_id"] for r in visible], why, {"identifier": identifier},
                      "shown" if visible else "not-found")
        return visible

    @r.get("/fhir/Patient")
    async def fhir_search(request: Request, identifier: str = "", family: str = "", given: str = "",
                          birthdate: str = "", gender: str = "",
                          postcode: str = Query("", alias="address-postalcode"), why: str | None = None,
                          client: Client = Depends(access.caller)) -> JSONResponse:
        fhir_reader(client)
        if identifier:
            visible = await by_identifier(client, identifier, "fhir-search", why)
            if isinstance(visible, JSONResponse):
                return visible
            return fhir(fhir_read_api.searchset(visible, fhir_base(request)))
        try:
            query = demographic_search.parse_query(family, given, birthdate, gender, postcode)
        except demographic_search.SearchCriteriaError as exc:
            return fhir(fhir_read_api.operation_outcome(
                "required", f"search by identifier=<system>|<value>, or by demographics: {exc}"), 400)
        scores = await asyncio.to_thread(find_by_demographics, query)
        visible = await visible_records(client, scores)
        # The criteria are identifying: the audit keeps that a search was made and what it found.
        await access.audited(client, "fhir-search", [r["person_id"] for r in visible], why,
                      {"demographic_search": "family,given,birthdate,gender,postcode"},
                      "shown" if visible else "not-found")
        return fhir(fhir_read_api.searchset(visible, fhir_base(request), scores))

    @r.get("/fhir/Patient/$ihe-pix")
    async def fhir_pix(request: Request, source_identifier: str = Query("", alias="sourceIdentifier"),
                       why: str | None = None, client: Client = Depends(access.caller)) -> JSONResponse:
        """PIXm: every identifier this caller may see of the person one identifier belongs to."""
        fhir_reader(client)
        visible = await by_identifier(client, source_identifier, "fhir-pix", why)
        if isinstance(visible, JSONResponse):
            return visible
        if not visible:
            return fhir(fhir_read_api.operation_outcome("not-found", "no person with that identifier for this client"),
                        404)
        return fhir(fhir_read_api.pix_parameters(visible[0], fhir_base(request)))

    @r.get("/fhir/Patient/{person_id}/$everything")
    async def fhir_everything(request: Request, person_id: str, why: str | None = None,
                              client: Client = Depends(access.caller)) -> JSONResponse:
        visible = await fhir_patient_record(client, person_id)
        if visible is None:
            return fhir_not_found(person_id)
        await access.audited(client, "fhir-everything", [person_id], why, {})
        return fhir(fhir_read_api.everything(visible, fhir_base(request)))

    @r.get("/fhir/Patient/{person_id}")
    async def fhir_read(person_id: str, why: str | None = None,
                        client: Client = Depends(access.caller)) -> JSONResponse:
        visible = await fhir_patient_record(client, person_id)
        if visible is None:
            survivor = await asyncio.to_thread(service.graph().survivor_of, person_id)
            if survivor and await fhir_patient_record(client, survivor) is not None:
                await access.audited(client, "fhir-read", [person_id, survivor], why, {"merged_into": survivor})
                return fhir(fhir_read_api.replaced_patient(person_id, survivor))
            return fhir_not_found(person_id)
        await access.audited(client, "fhir-read", [person_id], why, {})
        return fhir(fhir_read_api.fhir_patient(visible))

    return r
