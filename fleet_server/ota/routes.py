"""HTTP API of OTA: releases (manifest, then artifact), artifact download for devices (Range,
ETag), campaigns with their progress and the operator's actions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from firmware_protocols.errors import ManifestError
from firmware_protocols.fields import Identifier
from firmware_protocols.ota import ReleaseManifest, check_signature
from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, OtaReader, OtaWriter
from fleet_server.errors import ApiError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.services import provide, provide_optional
from fleet_server.ota.conductor import OtaConductor
from fleet_server.ota.policy import CampaignPolicy, TargetSelector
from fleet_server.ota.progress import CampaignProgress
from fleet_server.ota.store import OtaStore, ReleaseView


@dataclass(frozen=True, slots=True)
class ReleaseKeys:
    """The release public keys manifests must verify with (`HAODIAN_OTA_RELEASE_KEYS`), by key id."""

    keys: Mapping[str, Ed25519PublicKey]


StoreDep = Annotated[OtaStore, Depends(provide(OtaStore))]
ReleaseKeysDep = Annotated[ReleaseKeys, Depends(provide(ReleaseKeys))]
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
VersionPath = Annotated[str, Path(pattern=r"^\d{1,6}\.\d{1,6}\.\d{1,6}$")]
CampaignIdPath = Annotated[str, Path(pattern=r"^[\x21-\x7e]{1,64}$")]

router = APIRouter(prefix="/api/v1/ota", tags=["ota"], responses=AUTH_ERRORS)
artifacts_router = APIRouter(tags=["ota"])


@router.post("/releases", status_code=201, summary="Register a release by its signed manifest")
async def add_release(
    principal: OtaWriter,
    manifest: ReleaseManifest,
    store: StoreDep,
    keys: ReleaseKeysDep,
    audit: AuditDep,
) -> ReleaseView:
    """The manifest must verify with one of the release public keys the server is configured
    with (`HAODIAN_OTA_RELEASE_KEYS`): the server refuses early what every device would refuse."""
    if not keys.keys:
        raise ApiError(
            503,
            "NO_RELEASE_KEYS",
            "no release keys configured (HAODIAN_OTA_RELEASE_KEYS); releases cannot be checked",
            "未配置发布公钥（HAODIAN_OTA_RELEASE_KEYS），无法校验版本",
        )
    try:
        check_signature(manifest, keys.keys)
    except ManifestError as exc:
        raise ApiError(422, "MANIFEST_SIGNATURE", str(exc), f"清单签名无效：{exc}") from exc
    release = await store.add_release(manifest)
    target = f"{manifest.name}/{manifest.version}"
    await audit(principal, "ota.release", target, detail={"sha256": manifest.sha256})
    return release


@router.put(
    "/releases/{name}/{version}/artifact",
    summary="Upload a release's artifact (the body, application/octet-stream)",
    responses=NOT_FOUND,
)
async def upload_artifact(
    principal: OtaWriter, name: Name, version: VersionPath, request: Request, store: StoreDep, audit: AuditDep
) -> ReleaseView:
    release = await store.store_artifact(name, version, request.stream())
    await audit(principal, "ota.artifact", f"{name}/{version}")
    return release


@router.get("/releases", summary="Releases, newest first")
async def list_releases(_: OtaReader, store: StoreDep) -> list[ReleaseView]:
    return await store.releases()


@artifacts_router.get(
    "/ota/artifacts/{sha256}",
    summary="An artifact by its SHA-256, for devices: Range requests resume a download; the ETag is the hash",
    responses=NOT_FOUND,
    response_model=None,
)
async def artifact(
    sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], request: Request, store: StoreDep
) -> Response:
    path = store.artifact_path(sha256)
    if path is None:
        raise ApiError(404, "ARTIFACT_NOT_FOUND", f"no artifact {sha256}", f"升级包 {sha256[:12]}… 不存在")
    etag = f'"{sha256}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"etag": etag})
    # Content-addressed: the bytes under a name never change, so caches may keep them for good.
    headers = {"etag": etag, "cache-control": "public, max-age=31536000, immutable"}
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


class NewCampaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    version: Annotated[str, Field(pattern=r"^\d{1,6}\.\d{1,6}\.\d{1,6}$")]
    campaign_id: Identifier | None = None
    target: TargetSelector = TargetSelector()
    policy: CampaignPolicy = CampaignPolicy()


ConductorDep = Annotated[OtaConductor | None, Depends(provide_optional(OtaConductor))]


@router.post("/campaigns", status_code=201, summary="Start a campaign: a release to the devices selected")
async def create_campaign(
    principal: OtaWriter,
    body: NewCampaign,
    store: StoreDep,
    conductor: ConductorDep,
    audit: AuditDep,
) -> CampaignProgress:
    progress = await store.create_campaign(
        release_name=body.release_name,
        version=body.version,
        selector=body.target,
        policy=body.policy,
        campaign_id=body.campaign_id,
    )
    if conductor is not None:
        conductor.nudge()
    detail = body.model_dump(mode="json", exclude_defaults=True)
    await audit(principal, "ota.campaign", progress.campaign_id, detail=detail)
    return progress


@router.get("/campaigns", summary="Campaigns with their progress, newest first")
async def list_campaigns(_: OtaReader, store: StoreDep) -> list[CampaignProgress]:
    return await store.campaigns()


@router.get("/campaigns/{campaign_id}", summary="A campaign's progress", responses=NOT_FOUND)
async def campaign(_: OtaReader, campaign_id: CampaignIdPath, store: StoreDep) -> CampaignProgress:
    return await store.progress(campaign_id)


@router.post(
    "/campaigns/{campaign_id}/{action}",
    summary="pause, resume, abort, or retry (offer again to devices that rolled back or failed)",
    responses=NOT_FOUND,
)
async def act(
    principal: OtaWriter,
    campaign_id: CampaignIdPath,
    action: Literal["pause", "resume", "abort", "retry"],
    store: StoreDep,
    conductor: ConductorDep,
    audit: AuditDep,
) -> CampaignProgress:
    progress = await store.act(campaign_id, action)
    if conductor is not None:
        conductor.nudge()
    await audit(principal, f"ota.{action}", campaign_id)
    return progress
