"""The instance catalogue: the packaged file, choosing the cheapest offer, refusals, listing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dstack.catalogue.offers import (
    CLOUDS,
    Catalogue,
    CatalogueError,
    InstanceType,
    NoOfferError,
    Offer,
    choose_offer,
    describe_offer,
    gpu_name_key,
    gpu_name_matches,
    list_offers,
    load_catalogue,
    parse_catalogue,
)
from dstack.errors import DstackError, UsageError
from dstack.spec.models import Resources

GIB = 1024**3
X = "\N{MULTIPLICATION SIGN}"
CATALOGUE = load_catalogue()


def res(**fields: Any) -> Resources:
    """Resources as a workflow file would write them."""
    return Resources.model_validate(fields)


def entry(**fields: Any) -> dict[str, Any]:
    """A catalogue entry: an AWS us-east-1 type unless `fields` say otherwise."""
    return {
        "cloud": "aws",
        "vcpus": 4,
        "memory_gib": 16,
        "price": 1.0,
        "spot_price": 0.5,
        "regions": ["us-east-1"],
        **fields,
    }


def catalogue_of(*entries: dict[str, Any]) -> Catalogue:
    """A small catalogue of `entries`, with the packaged file's header."""
    header = CATALOGUE.model_dump(mode="json", exclude={"instances"})
    return Catalogue.model_validate({**header, "instances": list(entries)})


# -- the packaged file -------------------------------------------------------------------------


def test_packaged_catalogue_validates_and_is_cached() -> None:
    assert load_catalogue() is CATALOGUE
    counts = {cloud: sum(e.cloud == cloud for e in CATALOGUE.instances) for cloud in CLOUDS}
    assert counts["aws"] >= 40 and counts["gcp"] >= 40
    assert 60 <= len(CATALOGUE.instances) <= 130
    assert CATALOGUE.prices_as_of <= CATALOGUE.written
    assert "not fetched live" in CATALOGUE.source.lower()
    assert CATALOGUE.price_regions == {"aws": "us-east-1", "gcp": "us-central1"}


def test_catalogue_covers_the_families() -> None:
    aws = {e.type.split(".")[0] for e in CATALOGUE.instances if e.cloud == "aws"}
    assert {"g4dn", "g5", "g6", "p3", "p4d", "p5", "t3", "m5", "m6i", "c6i", "r6i"} <= aws
    gcp = {e.type.rsplit("-", 1)[0] for e in CATALOGUE.instances if e.cloud == "gcp"}
    assert {
        "a2-highgpu",
        "a2-ultragpu",
        "a3-highgpu",
        "e2-standard",
        "n2-standard",
        "c2-standard",
        "g2-standard",
    } <= gcp
    accelerators = {e.accelerator for e in CATALOGUE.instances if e.accelerator}
    assert accelerators == {"nvidia-tesla-t4", "nvidia-tesla-v100"}
    names = {(e.cloud, e.gpu.name) for e in CATALOGUE.instances if e.gpu}
    assert {(c, n) for c in CLOUDS for n in ("T4", "V100", "A100", "H100", "L4")} <= names
    assert ("aws", "A10G") in names


@pytest.mark.parametrize("item", CATALOGUE.instances, ids=lambda e: f"{e.cloud}-{e.type}")
def test_every_entry_is_priced_and_placed(item: InstanceType) -> None:
    assert item.price > 0
    assert item.spot_price is None or 0 < item.spot_price < item.price
    assert item.regions
    assert item.memory_gib > 0 and item.vcpus >= 1
    if item.gpu:
        assert item.gpu.count >= 1 and item.gpu.memory_gib >= 16


def test_the_file_on_disk_is_plain_json_with_its_date_and_source() -> None:
    from importlib.resources import files

    doc = json.loads(files("dstack.catalogue").joinpath("data", "instances.json").read_text())
    assert doc["prices_as_of"] == "2025-05-01" and doc["written"] == "2026-11-26"
    assert "pricing pages" in doc["source"]
    assert any("representative" in note for note in doc["notes"])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"spot_price": 2.0}, "spot_price must be less"),
        ({"price": 0}, "greater than 0"),
        ({"colour": "red"}, "Extra inputs"),
        ({"accelerator": "nvidia-tesla-t4"}, "accelerator needs cloud gcp"),
        ({"regions": ["Virginia"]}, "not aws regions"),
        ({"regions": []}, "at least 1"),
        ({"cloud": "azure"}, "'aws' or 'gcp'"),
    ],
)
def test_invalid_entries_are_refused(change: dict[str, Any], problem: str) -> None:
    header = CATALOGUE.model_dump(mode="json", exclude={"instances"})
    text = json.dumps({**header, "instances": [entry(type="x.large", **change)]})
    with pytest.raises(CatalogueError, match=problem) as caught:
        parse_catalogue(text, "test.json")
    assert "test.json" in caught.value.message and caught.value.hint


def test_duplicate_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        catalogue_of(entry(type="x.large"), entry(type="x.large", price=2.0))


# -- GPU names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("A100", ("a100", None)),
        ("a100-80GB", ("a100", 80)),
        ("A100 40gb", ("a100", 40)),
        ("nvidia-a100-80gb", ("a100", 80)),
        ("nvidia-tesla-t4", ("t4", None)),
        ("Tesla_V100", ("v100", None)),
        ("NVIDIA L4", ("l4", None)),
        ("H100_80G", ("h100", 80)),
    ],
)
def test_gpu_name_key(name: str, key: tuple[str, int | None]) -> None:
    assert gpu_name_key(name) == key


def test_gpu_names_match_loosely_and_variants_exactly() -> None:
    a100_40, a100_80 = (
        next(
            e.gpu
            for e in CATALOGUE.instances
            if e.gpu and e.gpu.name == "A100" and e.gpu.memory_gib == gib
        )
        for gib in (40, 80)
    )
    assert gpu_name_matches("a100", a100_40) and gpu_name_matches("a100", a100_80)
    assert gpu_name_matches("A100-80GB", a100_80) and not gpu_name_matches("A100-80GB", a100_40)
    assert gpu_name_matches("a100-40gb", a100_40) and not gpu_name_matches("a100-40gb", a100_80)
    assert not gpu_name_matches("a10", a100_40)


# -- choosing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "cloud", "region", "expected"),
    [
        ({"gpu": 1}, "aws", "us-east-1", ("g4dn.xlarge", None)),
        ({"gpu": {"name": "A100", "count": 8}}, "aws", "us-east-1", ("p4d.24xlarge", None)),
        ({"gpu": {"name": "A100-80GB", "count": 8}}, "aws", "us-west-2", ("p4de.24xlarge", None)),
        ({"gpu": {"name": "H100"}}, "aws", "us-east-1", ("p5.48xlarge", None)),
        ({"gpu": {"name": "a10g"}}, "aws", "us-east-1", ("g5.xlarge", None)),
        ({"gpu": {"memory": "24GB"}}, "aws", "us-east-1", ("g6.xlarge", None)),
        ({"gpu": {"name": "V100-32GB"}}, "aws", "us-east-1", ("p3dn.24xlarge", None)),
        ({"gpu": {"count": 4}}, "aws", "us-east-1", ("g4dn.12xlarge", None)),
        ({"gpu": {"name": "V100", "count": 2}}, "aws", "us-east-1", ("p3.8xlarge", None)),
        ({}, "aws", "us-east-1", ("t3.medium", None)),
        ({"cpu": 4, "memory": "16GB"}, "aws", "eu-west-1", ("t3.xlarge", None)),
        ({"cpu": 8, "memory": "64GB"}, "aws", "us-east-1", ("r6i.2xlarge", None)),
        ({"cpu": 64, "memory": "128GB"}, "aws", "us-east-1", ("c6i.16xlarge", None)),
        ({"gpu": 1}, "gcp", "us-central1", ("n1-standard-4", "nvidia-tesla-t4")),
        (
            {"gpu": {"name": "nvidia-tesla-t4"}},
            "gcp",
            "us-central1",
            ("n1-standard-4", "nvidia-tesla-t4"),
        ),
        (
            {"gpu": {"name": "T4", "count": 2}},
            "gcp",
            "us-west1",
            ("n1-standard-16", "nvidia-tesla-t4"),
        ),
        ({"gpu": {"name": "V100"}}, "gcp", "us-central1", ("n1-standard-8", "nvidia-tesla-v100")),
        ({"gpu": {"name": "L4"}}, "gcp", "us-central1", ("g2-standard-4", None)),
        ({"gpu": {"name": "A100"}}, "gcp", "us-central1", ("a2-highgpu-1g", None)),
        ({"gpu": {"name": "A100-80GB"}}, "gcp", "us-central1", ("a2-ultragpu-1g", None)),
        ({"gpu": {"name": "A100", "count": 16}}, "gcp", "us-central1", ("a2-megagpu-16g", None)),
        ({"gpu": {"name": "H100", "count": 8}}, "gcp", "us-central1", ("a3-highgpu-8g", None)),
        ({"cpu": 8, "memory": "32GB"}, "gcp", "us-central1", ("e2-standard-8", None)),
        ({"cpu": 60}, "gcp", "us-central1", ("c2-standard-60", None)),
    ],
)
def test_choose_offer_picks_the_cheapest_fitting_type(
    resources: dict[str, Any], cloud: str, region: str, expected: tuple[str, str | None]
) -> None:
    offer = choose_offer(res(**resources), cloud, region, interruptible=False)
    assert (offer.type, offer.accelerator) == expected
    assert offer.cloud == cloud and offer.region == region and not offer.spot
    item = next(
        e
        for e in CATALOGUE.instances
        if e.cloud == cloud
        and e.type == offer.type
        and e.accelerator == offer.accelerator
        and e.gpu == offer.gpu
    )
    assert offer.price == item.price


def test_without_a_gpu_cpu_types_win() -> None:
    for cloud, region in (("aws", "us-east-1"), ("gcp", "us-central1")):
        for cpu in (1, 2, 4, 8, 16, 32, 48):
            offer = choose_offer(res(cpu=cpu, memory=f"{cpu * 2}GB"), cloud, region)
            assert offer.gpu is None and offer.vcpus >= cpu


def test_interruptible_uses_the_spot_price() -> None:
    offer = choose_offer(res(gpu=1), "aws", "us-east-1", interruptible=True)
    assert offer.type == "g4dn.xlarge" and offer.spot and offer.price == 0.22
    assert choose_offer(res(gpu=1, interruptible=True), "aws", "us-east-1") == offer
    assert not choose_offer(
        res(gpu=1, interruptible=True), "aws", "us-east-1", interruptible=False
    ).spot
    gcp = choose_offer(res(gpu=1), "gcp", "us-central1", interruptible=True)
    assert gcp.spot and gcp.price < 0.54


def test_interruptible_may_change_the_choice() -> None:
    catalogue = catalogue_of(
        entry(
            type="no-spot.xlarge",
            price=0.40,
            spot_price=None,
            gpu={"name": "T4", "count": 1, "memory_gib": 16},
        ),
        entry(
            type="cheap.xlarge",
            price=0.50,
            spot_price=0.30,
            gpu={"name": "T4", "count": 1, "memory_gib": 16},
        ),
        entry(
            type="deep-spot.xlarge",
            price=0.60,
            spot_price=0.10,
            gpu={"name": "L4", "count": 1, "memory_gib": 24},
        ),
    )
    on_demand = choose_offer(res(gpu=1), "aws", "us-east-1", catalogue=catalogue)
    spot = choose_offer(res(gpu=1), "aws", "us-east-1", interruptible=True, catalogue=catalogue)
    assert (on_demand.type, on_demand.price, on_demand.spot) == ("no-spot.xlarge", 0.40, False)
    assert (spot.type, spot.price, spot.spot) == ("deep-spot.xlarge", 0.10, True)
    t4 = choose_offer(
        res(gpu={"name": "t4"}), "aws", "us-east-1", interruptible=True, catalogue=catalogue
    )
    assert t4.type == "cheap.xlarge"  # the T4 type without spot is skipped


def test_regions_filter_aws() -> None:
    with pytest.raises(NoOfferError) as caught:
        choose_offer(res(gpu={"name": "L4"}), "aws", "eu-west-1")
    first = caught.value.closest[0]
    assert (first.type, first.region) == ("g6.xlarge", "eu-central-1")  # nearest: same continent
    assert choose_offer(res(gpu={"name": "L4"}), "aws", "eu-central-1").type == "g6.xlarge"
    assert (
        choose_offer(res(gpu={"name": "A100-80GB", "count": 8}), "aws", "us-east-1").region
        == "us-east-1"
    )
    with pytest.raises(NoOfferError):
        choose_offer(res(gpu={"name": "A100-80GB", "count": 8}), "aws", "eu-west-1")


def test_regions_and_zones_filter_gcp() -> None:
    in_region = choose_offer(res(gpu=1), "gcp", "us-east1")
    assert (in_region.type, in_region.region, in_region.zone) == (
        "n1-standard-4",
        "us-east1",
        "us-east1-c",
    )
    in_zone = choose_offer(res(gpu=1), "gcp", "us-east1-d")
    assert (in_zone.type, in_zone.zone) == ("n1-standard-4", "us-east1-d")
    no_t4_here = choose_offer(res(gpu=1), "gcp", "us-east1-b")  # T4s are in us-east1-c and -d
    assert (no_t4_here.type, no_t4_here.gpu and no_t4_here.gpu.name) == ("g2-standard-4", "L4")
    cpu = choose_offer(res(cpu=2), "gcp", "Europe-West4-A")
    assert (cpu.type, cpu.region, cpu.zone) == ("e2-standard-2", "europe-west4", "europe-west4-a")
    h100 = choose_offer(res(gpu={"name": "H100", "count": 8}), "gcp", "europe-west4")
    assert h100.zone == "europe-west4-b"
    with pytest.raises(NoOfferError):
        choose_offer(res(gpu={"name": "H100", "count": 8}), "gcp", "europe-west4-a")


def test_refusal_says_what_was_asked_and_lists_the_closest_offers() -> None:
    asked = res(gpu={"name": "A100-80GB", "count": 8}, cpu=64)
    with pytest.raises(NoOfferError) as caught:
        choose_offer(asked, "aws", "us-east-1", interruptible=True)
    error = caught.value
    assert isinstance(error, UsageError) and isinstance(error, DstackError)
    assert error.exit_code == 2
    lines = error.message.splitlines()
    assert lines[0] == f"no aws instance type in us-east-1 has 64 vCPU, 8{X}A100-80GB as spot"
    offers = [line for line in lines if line.startswith("  ")]
    assert 3 <= len(offers) == len(error.closest) <= 5
    assert all("$" in line and " in " in line for line in offers)
    assert error.closest[0].type == "p4de.24xlarge" and "no spot" in offers[0]
    assert error.closest[1].type == "p4d.24xlarge" and "A100 40 GiB" in offers[1]
    assert error.hint and "region" in error.hint and "interruptible" in error.hint


def test_refusal_for_too_many_gpus_lists_fewer_gpus() -> None:
    with pytest.raises(NoOfferError) as caught:
        choose_offer(res(gpu={"name": "H100", "count": 16}), "gcp", "us-central1-a")
    first = caught.value.closest[0]
    assert first.type == "a3-highgpu-8g" and "(8 GPU)" in caught.value.message.splitlines()[2]


def test_refusal_for_an_unknown_region_lists_the_known_ones() -> None:
    with pytest.raises(NoOfferError) as caught:
        choose_offer(res(gpu=1), "aws", "mars-1")
    assert "no aws region 'mars-1'" in (caught.value.hint or "")
    assert "us-east-1" in (caught.value.hint or "")
    assert len({o.gpu.name for o in caught.value.closest if o.gpu}) >= 3


def test_unknown_cloud_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="awz") as caught:
        choose_offer(res(), "awz", "us-east-1")
    assert caught.value.hint == 'Did you mean "aws"?'


# -- listing and describing --------------------------------------------------------------------


def test_list_offers_is_sorted_and_filtered() -> None:
    every = list_offers()
    assert len(every) == len(CATALOGUE.instances)
    assert [o.price for o in every] == sorted(o.price for o in every)
    assert {o.cloud for o in every} == {"aws", "gcp"}
    gpus = list_offers(res(gpu={"name": "A100"}), "gcp", "us-central1")
    assert gpus and all(o.gpu and o.gpu.name == "A100" for o in gpus)
    spot = list_offers(res(gpu=8), "aws", "us-east-1", interruptible=True)
    assert spot and all(o.spot for o in spot)
    assert "p4de.24xlarge" not in {o.type for o in spot}
    assert "p4de.24xlarge" in {o.type for o in list_offers(res(gpu=8), "aws", "us-east-1")}


@pytest.mark.parametrize(
    ("offer", "text"),
    [
        (
            Offer(
                cloud="aws",
                type="g5.xlarge",
                vcpus=4,
                memory_gib=16,
                gpu={"name": "A10G", "count": 1, "memory_gib": 24},
                price=1.006,
                spot=False,
                region="us-east-1",
            ),
            f"g5.xlarge: 4 vCPU, 16 GiB, 1{X}A10G 24 GiB — $1.006/h on-demand in us-east-1",
        ),
        (
            Offer(
                cloud="gcp",
                type="n1-standard-4",
                accelerator="nvidia-tesla-t4",
                vcpus=4,
                memory_gib=15,
                gpu={"name": "T4", "count": 1, "memory_gib": 16},
                price=0.1518,
                spot=True,
                region="us-central1",
                zone="us-central1-a",
            ),
            f"n1-standard-4 + 1{X}nvidia-tesla-t4: 4 vCPU, 15 GiB, 1{X}T4 16 GiB — "
            "$0.152/h spot in us-central1 (us-central1-a)",
        ),
        (
            Offer(
                cloud="aws",
                type="t3.medium",
                vcpus=2,
                memory_gib=4,
                price=0.0416,
                spot=False,
                region="eu-west-1",
            ),
            "t3.medium: 2 vCPU, 4 GiB — $0.0416/h on-demand in eu-west-1",
        ),
    ],
)
def test_describe_offer(offer: Offer, text: str) -> None:
    assert describe_offer(offer) == text


# -- the property ------------------------------------------------------------------------------

# Names a user may write → (the catalogue's GPU name, the GiB variant it insists on).
GPU_NAMES: dict[str, tuple[str, int | None]] = {
    "T4": ("T4", None),
    "nvidia-tesla-t4": ("T4", None),
    "a10g": ("A10G", None),
    "L4": ("L4", None),
    "v100": ("V100", None),
    "V100-32GB": ("V100", 32),
    "A100": ("A100", None),
    "a100-40gb": ("A100", 40),
    "A100 80GB": ("A100", 80),
    "H100": ("H100", None),
    "B200": ("B200", None),
}


def region_of(place: str) -> str:
    """The region of an AWS region, or a GCP region or zone (`us-central1-a` → `us-central1`)."""
    return place[:-2] if place[-1].isalpha() and place[-2] == "-" else place


PLACES = sorted(
    {(e.cloud, r) for e in CATALOGUE.instances for r in e.regions}
    | {(e.cloud, region_of(r)) for e in CATALOGUE.instances for r in e.regions}
)


def fits(item: InstanceType, resources: Resources, spot: bool) -> bool:
    """The test's own reading of "this type satisfies these resources"."""
    if item.vcpus < (resources.cpu or 1) or item.memory_gib * GIB < (resources.memory or 0):
        return False
    if spot and item.spot_price is None:
        return False
    want = resources.gpu
    if want is None:
        return True
    gpu = item.gpu
    if gpu is None or gpu.count < want.count:
        return False
    if want.name:
        name, variant = GPU_NAMES[want.name]
        if gpu.name != name or variant not in (None, gpu.memory_gib):
            return False
    return not want.memory_bytes or gpu.memory_gib * GIB >= want.memory_bytes


def offered_in(item: InstanceType, place: str) -> bool:
    """AWS: the region is listed. GCP: the place, its region, or a zone of it is listed."""
    if item.cloud == "aws":
        return place in item.regions
    return any(r in (place, region_of(place)) or r.startswith(f"{place}-") for r in item.regions)


resources_strategy = st.builds(
    lambda cpu, memory, gpu, interruptible: res(
        cpu=cpu, memory=memory, gpu=gpu, interruptible=interruptible
    ),
    st.none() | st.integers(1, 256),
    st.none() | st.integers(1, 2200).map(lambda n: f"{n}GB"),
    st.none()
    | st.integers(0, 16)
    | st.fixed_dictionaries(
        {"count": st.integers(1, 16)},
        optional={
            "name": st.sampled_from(sorted(GPU_NAMES)),
            "memory": st.integers(8, 96).map(lambda n: f"{n}GB"),
        },
    ),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    resources=resources_strategy,
    place=st.sampled_from(PLACES),
)
def test_choice_fits_and_nothing_cheaper_fits(resources: Resources, place: tuple[str, str]) -> None:
    cloud, region = place
    spot = resources.interruptible
    candidates = [
        e
        for e in CATALOGUE.instances
        if e.cloud == cloud and offered_in(e, region) and fits(e, resources, spot)
    ]
    try:
        offer = choose_offer(resources, cloud, region)
    except NoOfferError as error:
        assert not candidates
        assert 1 <= len(error.closest) <= 5
        return
    item = next(
        e
        for e in candidates
        if (e.type, e.accelerator, e.gpu) == (offer.type, offer.accelerator, offer.gpu)
    )
    assert offer.spot == spot
    assert offer.price == (item.spot_price if spot else item.price)
    cheapest = min(e.spot_price if spot else e.price for e in candidates)  # type: ignore[type-var]
    assert offer.price == cheapest
    assert offer.region == region_of(region)
    assert offer.zone == (region if region != region_of(region) else offer.zone)
