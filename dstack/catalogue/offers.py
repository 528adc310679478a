"""The instance catalogue: the AWS and GCP machine types dstack rents, and choosing one.

`data/instances.json` lists each type once: vCPUs, memory, GPUs, the on-demand and a
typical spot price per hour, and where it is offered. Prices are list prices in one region
per cloud, written down by hand, not fetched live: the file's `source` and `prices_as_of` say
so. `load_catalogue()` validates the file once and caches it.

`choose_offer(resources, cloud, region, interruptible=...)` is the cheapest type that fits a
workflow's `resources` there, or a `NoOfferError` that lists the closest offers;
`list_offers(...)` is every fitting offer, cheapest first; `describe_offer` is one line for
people. A GPU name matches loosely: case, `-`/`_`/spaces and the words "nvidia" and "tesla"
are ignored, and a memory suffix picks a variant (`A100` is any A100, `A100-80GB` only 80 GiB).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dstack.errors import DstackError, UsageError
from dstack.names import did_you_mean
from dstack.sizes import format_written
from dstack.spec.models import Resources

Cloud = Literal["aws", "gcp"]
CLOUDS: tuple[str, ...] = get_args(Cloud)
DATA_FILE = "instances.json"
GIB = 1024**3
CLOSEST = 5
_LOCATION = {
    "aws": re.compile(r"^(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)(?P<zone>[a-z])?$"),
    "gcp": re.compile(r"^(?P<region>[a-z]+-[a-z]+\d+)(?P<zone>-[a-z])?$"),
}
_IGNORED_WORDS = {"nvidia", "tesla"}
_VARIANT = re.compile(r"^(\d+)(?:gb|gib|g)$")
_TIMES = "\N{MULTIPLICATION SIGN}"


class CatalogueError(DstackError):
    """The instance catalogue file cannot be read or is not valid."""


class NoOfferError(UsageError):
    """No instance type in the catalogue fits the resources in the region; `closest` are near."""

    def __init__(self, message: str, hint: str, closest: Iterable[Offer] = ()) -> None:
        super().__init__(message, hint)
        self.closest = tuple(closest)


class CatalogueModel(BaseModel):
    """Base of the catalogue models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Gpu(CatalogueModel):
    """The GPUs of one instance type."""

    name: str = Field(min_length=1, description="GPU model as the cloud names it, e.g. `A10G`.")
    count: int = Field(ge=1, description="Number of GPUs in one instance.")
    memory_gib: float = Field(gt=0, description="Memory of each GPU, GiB.")


class InstanceType(CatalogueModel):
    """One entry of the catalogue: a type, its hardware, prices and where it is offered."""

    cloud: Cloud = Field(description="`aws` or `gcp`.")
    type: str = Field(
        min_length=1, description="EC2 instance or GCE machine type, e.g. `g5.xlarge`."
    )
    accelerator: str | None = Field(
        None,
        description="GCP guest accelerator type attached `gpu.count` times, e.g. "
        "`nvidia-tesla-t4`; none when the machine type includes its GPUs.",
    )
    vcpus: int = Field(ge=1, description="Number of vCPUs.")
    memory_gib: float = Field(gt=0, description="Memory, GiB.")
    gpu: Gpu | None = Field(None, description="The GPUs; none for a CPU-only type.")
    price: float = Field(gt=0, description="On-demand USD per hour in the cloud's price region.")
    spot_price: float | None = Field(
        None, gt=0, description="Typical spot USD per hour; none when spot is not offered."
    )
    regions: tuple[str, ...] = Field(
        min_length=1,
        description="Where it is offered: AWS regions; GCP regions (all zones) or zones.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> InstanceType:
        if self.spot_price is not None and self.spot_price >= self.price:
            raise ValueError(f"{self.type}: spot_price must be less than the on-demand price")
        if self.accelerator and (self.cloud != "gcp" or self.gpu is None):
            raise ValueError(f"{self.type}: an accelerator needs cloud gcp and a gpu")
        bad = [r for r in self.regions if not _LOCATION[self.cloud].match(r)]
        if bad:
            raise ValueError(f"{self.type}: not {self.cloud} regions or zones: {bad}")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"{self.type}: a region is listed twice")
        return self

    @property
    def key(self) -> tuple[str, str, str | None, int]:
        """What makes an entry unique: cloud, type, accelerator and GPU count."""
        return self.cloud, self.type, self.accelerator, self.gpu.count if self.gpu else 0


class Catalogue(CatalogueModel):
    """The catalogue file: where its prices come from, and the instance types."""

    schema_version: Literal[1] = Field(description="Version of this file's format.")
    prices_as_of: date = Field(description="When the prices were taken from the pricing pages.")
    written: date = Field(description="When this file was written.")
    currency: Literal["USD"] = Field(description="Currency of every price.")
    price_regions: dict[Cloud, str] = Field(description="The region each cloud's prices are for.")
    source: str = Field(min_length=1, description="Where the prices come from, and how good.")
    notes: tuple[str, ...] = Field((), description="How to read the entries.")
    instances: tuple[InstanceType, ...] = Field(min_length=1, description="The instance types.")

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        seen: set[tuple[str, str, str | None, int]] = set()
        for entry in self.instances:
            if entry.key in seen:
                raise ValueError(f"{entry.cloud} {entry.type} is listed twice")
            seen.add(entry.key)
        return self


class Offer(CatalogueModel):
    """An instance type at a price in one place: what a run would rent."""

    cloud: Cloud = Field(description="`aws` or `gcp`.")
    type: str = Field(description="EC2 instance or GCE machine type.")
    accelerator: str | None = Field(None, description="GCP guest accelerator type, if any.")
    vcpus: int = Field(description="Number of vCPUs.")
    memory_gib: float = Field(description="Memory, GiB.")
    gpu: Gpu | None = Field(None, description="The GPUs; none for a CPU-only type.")
    price: float = Field(description="USD per hour: the spot price when `spot`.")
    spot: bool = Field(description="A spot (interruptible) instance.")
    region: str = Field(description="The region to run in.")
    zone: str | None = Field(None, description="The zone to run in; none means any zone.")


def parse_catalogue(text: str, origin: str) -> Catalogue:
    """The catalogue in JSON `text`; a `CatalogueError` naming `origin` when it is invalid."""
    try:
        return Catalogue.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise CatalogueError(
            f"the instance catalogue {origin} is not valid: {problems}",
            "Fix the file, or reinstall dstack to get the packaged one back.",
        ) from exc


@functools.cache
def load_catalogue() -> Catalogue:
    """The packaged catalogue, `data/instances.json`, validated once."""
    resource = importlib.resources.files("dstack.catalogue").joinpath("data", DATA_FILE)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(
            f"cannot read the instance catalogue {resource}: {exc}", "Reinstall dstack."
        ) from exc
    return parse_catalogue(text, str(resource))


def gpu_name_key(name: str) -> tuple[str, int | None]:
    """A GPU name as matching sees it: `"nvidia-A100-80GB"` → `("a100", 80)`."""
    words = [w for w in re.split(r"[\s_-]+", name.lower()) if w and w not in _IGNORED_WORDS]
    variant = _VARIANT.match(words[-1]) if len(words) > 1 else None
    if variant:
        words.pop()
    return "".join(words), int(variant[1]) if variant else None


def gpu_name_matches(wanted: str, gpu: Gpu) -> bool:
    """True when the GPU is what `wanted` names, e.g. `a100` or `A100-80GB` for an A100 80 GiB."""
    model, variant = gpu_name_key(wanted)
    return model == gpu_name_key(gpu.name)[0] and variant in (None, round(gpu.memory_gib))


@dataclass(frozen=True)
class _Need:
    """What `resources` ask for, in the catalogue's terms."""

    cpu: int
    memory: int
    gpus: int
    gpu_name: str | None
    gpu_memory: int | None
    spot: bool

    @classmethod
    def of(cls, resources: Resources, spot: bool) -> _Need:
        gpu = resources.gpu
        return cls(
            cpu=resources.cpu or 1,
            memory=resources.memory or 0,
            gpus=gpu.count if gpu else 0,
            gpu_name=gpu.name if gpu else None,
            gpu_memory=gpu.memory_bytes if gpu else None,
            spot=spot,
        )

    def __str__(self) -> str:
        parts = [f"{self.cpu} vCPU"] if self.cpu > 1 else []
        if self.memory:
            parts.append(f"{format_written(self.memory)} memory")
        if self.gpus:
            memory = f" with {format_written(self.gpu_memory)}" if self.gpu_memory else ""
            name = f"{_TIMES}{self.gpu_name}" if self.gpu_name else " GPU"
            parts.append(f"{self.gpus}{name}{memory}")
        return ", ".join(parts) or "any machine"


def _misses(entry: InstanceType, need: _Need) -> list[tuple[str, float]]:
    """What `entry` lacks: (text, shortfall 0..1) each, leaving out where it is offered."""
    misses: list[tuple[str, float]] = []
    if entry.vcpus < need.cpu:
        misses.append((f"{entry.vcpus} vCPU", 1 - entry.vcpus / need.cpu))
    if entry.memory_gib * GIB < need.memory:
        misses.append((f"{entry.memory_gib:g} GiB", 1 - entry.memory_gib * GIB / need.memory))
    if need.spot and entry.spot_price is None:
        misses.append(("no spot", 0.5))
    gpu = entry.gpu
    if need.gpus and gpu is None:  # misses every GPU constraint at once
        misses.append(("no GPU", 1 + bool(need.gpu_name) + bool(need.gpu_memory)))
    elif need.gpus and gpu is not None:
        if gpu.count < need.gpus:
            misses.append((f"{gpu.count} GPU", 1 - gpu.count / need.gpus))
        if need.gpu_name and not gpu_name_matches(need.gpu_name, gpu):
            same_model = gpu_name_key(gpu.name)[0] == gpu_name_key(need.gpu_name)[0]
            misses.append((f"{gpu.name} {gpu.memory_gib:g} GiB", 0.75 if same_model else 1.0))
        if need.gpu_memory and gpu.memory_gib * GIB < need.gpu_memory:
            have = gpu.memory_gib * GIB / need.gpu_memory
            misses.append((f"{gpu.memory_gib:g} GiB per GPU", 1 - have))
    return misses


def _split(cloud: str, location: str) -> tuple[str, str | None]:
    """`(region, zone)` of an AWS or GCP region or zone name (zone None for a region)."""
    match = _LOCATION[cloud].match(location)
    if not match:
        return location, None
    return match["region"], location if match["zone"] else None


def _placement(entry: InstanceType, wanted: str | None) -> tuple[str, str | None] | None:
    """`(region, zone)` where `entry` is offered in `wanted` (any place when None), or None."""
    if wanted is None:
        return _split(entry.cloud, entry.regions[0])
    region, zone = _split(entry.cloud, wanted)
    for location in entry.regions:
        there, there_zone = _split(entry.cloud, location)
        if there != region:
            continue
        if zone is None:
            return region, there_zone
        if there_zone in (None, zone):
            return region, zone
    return None


def _nearest(entry: InstanceType, wanted: str) -> tuple[str, str | None]:
    """The place `entry` is offered nearest to `wanted`: its region, else its continent."""
    region = _split(entry.cloud, wanted)[0]

    def distance(location: str) -> tuple[bool, bool]:
        there = _split(entry.cloud, location)[0]
        return there != region, there.split("-")[0] != region.split("-")[0]

    return _split(entry.cloud, min(entry.regions, key=distance))


def _offer(entry: InstanceType, place: tuple[str, str | None], spot: bool) -> Offer:
    price = entry.spot_price if spot and entry.spot_price is not None else entry.price
    hardware = entry.model_dump(include={"cloud", "type", "accelerator", "vcpus", "memory_gib"})
    return Offer(**hardware, gpu=entry.gpu, price=price, spot=spot, region=place[0], zone=place[1])


def _order(offer: Offer) -> tuple[float, int, int, float, str, str]:
    """Cheapest first; at equal prices fewer GPUs (CPU types first), then smaller."""
    gpus = offer.gpu.count if offer.gpu else 0
    return offer.price, gpus, offer.vcpus, offer.memory_gib, offer.type, offer.accelerator or ""


def _check_cloud(cloud: str) -> str:
    if cloud not in CLOUDS:
        raise UsageError(
            f"no instance catalogue for cloud {cloud!r}",
            did_you_mean(cloud, CLOUDS) or f"Clouds: {', '.join(CLOUDS)}.",
        )
    return cloud


def list_offers(
    resources: Resources | None = None,
    cloud: str | None = None,
    region: str | None = None,
    *,
    interruptible: bool = False,
    catalogue: Catalogue | None = None,
) -> list[Offer]:
    """Every offer that fits `resources` in `cloud` and `region`, cheapest first.

    `cloud` None means both clouds; `region` None lists each type once, in the first place it
    is offered (its price region). A GCP `region` may be a region or a zone. With
    `interruptible`, prices are spot prices and types without spot are left out.
    """
    need = _Need.of(resources or Resources(), interruptible)
    clouds = CLOUDS if cloud is None else (_check_cloud(cloud),)
    offers = []
    for entry in (catalogue or load_catalogue()).instances:
        if entry.cloud not in clouds or _misses(entry, need):
            continue
        place = _placement(entry, region.lower() if region else None)
        if place is not None:
            offers.append(_offer(entry, place, interruptible))
    return sorted(offers, key=_order)


def choose_offer(
    resources: Resources,
    cloud: str,
    region: str,
    *,
    interruptible: bool | None = None,
    catalogue: Catalogue | None = None,
) -> Offer:
    """The cheapest offer that fits `resources` in `cloud`'s `region` (GCP: region or zone).

    `interruptible` None means `resources.interruptible`; when true the spot price is what
    counts. Raises `NoOfferError`, listing the closest offers, when nothing fits.
    """
    spot = resources.interruptible if interruptible is None else interruptible
    offers = list_offers(resources, cloud, region, interruptible=spot, catalogue=catalogue)
    if offers:
        return offers[0]
    raise _refusal(_Need.of(resources, spot), cloud, region.lower(), catalogue or load_catalogue())


def _refusal(need: _Need, cloud: str, region: str, catalogue: Catalogue) -> NoOfferError:
    """The error for no fitting offer: what was asked and the closest offers with what they miss."""
    ranked: list[tuple[tuple[float, int, float], Offer, tuple[str, ...]]] = []
    for entry in catalogue.instances:
        if entry.cloud != cloud:
            continue
        misses = _misses(entry, need)
        place = _placement(entry, region)
        if place is None:
            place = _nearest(entry, region)
            misses.append((f"in {place[1] or place[0]}, not {region}", 0.5))
        offer = _offer(entry, place, need.spot and entry.spot_price is not None)
        score = (sum(shortfall for _, shortfall in misses), len(misses), offer.price)
        ranked.append((score, offer, tuple(text for text, _ in misses)))
    ranked.sort(key=lambda item: item[0])
    closest: list[tuple[Offer, tuple[str, ...]]] = []
    seen: set[tuple[tuple[str, ...], str | None]] = set()
    for _, offer, missing in ranked:  # one per way of missing: not five sizes of one family
        kind = missing, offer.gpu.name if offer.gpu else None
        if kind not in seen and len(closest) < CLOSEST:
            seen.add(kind)
            closest.append((offer, missing))
    spot = " as spot" if need.spot else ""
    lines = [f"no {cloud} instance type in {region} has {need}{spot}"]
    if closest:
        lines.append("Closest offers:")
        lines += [f"  {describe_offer(o)} ({'; '.join(m)})" for o, m in closest]
    hints = []
    entries = [e for e in catalogue.instances if e.cloud == cloud]
    if not any(_placement(e, region) for e in entries):
        known = sorted({_split(cloud, r)[0] for e in entries for r in e.regions})
        hints.append(f"The catalogue knows no {cloud} region {region!r}: {', '.join(known)}.")
    hints.append(
        "Set the profile's region to one where such a type is offered, or relax "
        "`resources` in the workflow (fewer or other GPUs, less memory or CPU)"
        + (", or drop `interruptible`." if need.spot else ".")
    )
    return NoOfferError("\n".join(lines), " ".join(hints), (o for o, _ in closest))


def format_price(price: float) -> str:
    """`$1.006`, `$32.773`, `$0.0416`: enough digits for cheap types too."""
    return f"${price:.3f}" if price >= 0.1 else f"${price:.4f}"


def describe_offer(offer: Offer) -> str:
    """One line for people; with a multiplication sign for the x:
    `g5.xlarge: 4 vCPU, 16 GiB, 1xA10G 24 GiB — $1.006/h on-demand in us-east-1`.
    """
    name = offer.type
    if offer.accelerator and offer.gpu:
        name += f" + {offer.gpu.count}{_TIMES}{offer.accelerator}"
    parts = [f"{offer.vcpus} vCPU", f"{offer.memory_gib:g} GiB"]
    if offer.gpu:
        parts.append(f"{offer.gpu.count}{_TIMES}{offer.gpu.name} {offer.gpu.memory_gib:g} GiB")
    where = offer.region + (f" ({offer.zone})" if offer.zone else "")
    kind = "spot" if offer.spot else "on-demand"
    return f"{name}: {', '.join(parts)} — {format_price(offer.price)}/h {kind} in {where}"
