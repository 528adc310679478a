"""What a cloud run's instance costs: its list price and how long it was billed.

A run on AWS or GCP records a `Billing` once its stack is up: the instance type, spot or
on-demand, the price per hour from the instance catalogue (`dstack.catalogue`) and the date
of the catalogue's prices. Its billed time runs from the `up` update of the run's stack that
created the instance to the `destroy` update that deleted it, as dstack recorded them
(`dstack.run.audit.record_update`); until then it runs to now. Costs are estimates from list
prices, not the cloud's bill. Local and Kubernetes runs have no price: no `Billing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from dstack.durations import elapsed_s

NO_COST = "\N{EM DASH}"
"""How listings show an unknown cost (a local or Kubernetes run, an older record)."""


class Billing(BaseModel):
    """A cloud run's instance, its list price and when it was billed (`run.json`'s `billing`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    instance_type: str = Field(description="EC2 instance or GCE machine type (with its guest "
                                           "accelerators), e.g. `g5.xlarge`.")
    spot: bool = Field(description="A spot (interruptible) instance: `price_per_hour` is the "
                                   "catalogue's typical spot price.")
    price_per_hour: float = Field(ge=0, description="USD per hour, from the instance catalogue.")
    price_date: str = Field(description="When the catalogue's prices were taken (its "
                                        "`prices_as_of`, YYYY-MM-DD).")
    created_at: str = Field(description="When the `up` update that created the instance was "
                                        "recorded (ISO 8601): billing starts.")
    deleted_at: str | None = Field(None, description="When the `destroy` update that deleted "
                                                     "it was recorded; None while it is up.")

    def billed_s(self, now: float) -> float:
        """Seconds billed: from creation to deletion, or to `now` (epoch seconds) while up."""
        return elapsed_s(self.created_at, self.deleted_at, now)

    def cost(self, now: float) -> float:
        """USD: the price per hour times the hours billed (to `now` while the instance is up)."""
        return self.price_per_hour * self.billed_s(now) / 3600


def run_cost(doc: Mapping[str, object], now: float) -> float | None:
    """USD a run's instance cost, from its document (to `now` while it is up); None without
    a price (a local or Kubernetes run, a record older than billing)."""
    billing = doc.get("billing")
    return Billing.model_validate(billing).cost(now) if billing else None


def instance_type(instance: Mapping[str, object]) -> str:
    """The type a run's `instance` record names: `g5.xlarge`, or a GCE machine type with its
    guest accelerators, `n1-standard-4 + 1xnvidia-tesla-t4`."""
    name = str(instance.get("type"))
    if instance.get("accelerator"):
        name += f" + {instance.get('gpus') or 1}x{instance['accelerator']}"
    return name


def open_billing(instance: Mapping[str, object], created_at: str) -> Billing | None:
    """The billing of a run whose stack's `up` (recorded at `created_at`) made `instance`;
    None when the instance has no price (a local or Kubernetes run)."""
    price = instance.get("price_per_hour")
    if not isinstance(price, int | float) or isinstance(price, bool):
        return None
    from dstack.catalogue.offers import load_catalogue  # only a cloud run reads the file

    return Billing(instance_type=instance_type(instance), spot=bool(instance.get("spot")),
                   price_per_hour=float(price),
                   price_date=load_catalogue().prices_as_of.isoformat(), created_at=created_at)


def priced_fields(instance: Mapping[str, object], created_at: str) -> dict[str, object]:
    """The run record's fields about the price of `instance` (`price_per_hour`, `billing`),
    made by the `up` recorded at `created_at`; none without a price."""
    billing = open_billing(instance, created_at)
    if billing is None:
        return {}
    return {"price_per_hour": billing.price_per_hour, "billing": billing.model_dump()}


def _touched(update: Mapping[str, object], op: str) -> bool:
    changes = update.get("changes")
    return isinstance(changes, list) and any(c.get("op") == op for c in changes)


def billed_interval(updates: Sequence[Mapping[str, object]]
                    ) -> tuple[str | None, str | None]:
    """(created, deleted): when the `up` that created the run's resources and the first
    `destroy` after it that deleted them were recorded (oldest first, as `record_update`
    keeps them); None for what did not happen (yet). An update that changed nothing counts
    when none did."""
    ups = [u for u in updates if u.get("kind") == "up"]
    up = next((u for u in ups if _touched(u, "create")), ups[0] if ups else None)
    if up is None:
        return None, None
    after = [u for u in updates[updates.index(up) + 1:] if u.get("kind") == "destroy"]
    down = next((u for u in after if _touched(u, "delete")), after[0] if after else None)
    return str(up["at"]), str(down["at"]) if down else None


def format_cost(cost: float | None) -> str:
    """A cost as listings show it: `$0.42`, `<$0.01`, and `—` when unknown."""
    if cost is None:
        return NO_COST
    if 0 < cost < 0.005:
        return "<$0.01"
    return f"${cost:,.2f}"

