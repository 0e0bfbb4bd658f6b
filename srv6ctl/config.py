"""The agent's config file (YAML, or a ConfigMap's data): one model, validated at start-up.

    addressPlan:            # ipam6.plan.AddressPlanConfig
      podCIDRv6: fd00:10::/48
    store:                  # ipam6.store.config.StoreConfig
      type: embedded

A bad config raises `InvalidConfig` whose message names the field (`addressPlan.podCIDRv6:
...`), so start-up stops with one readable line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ipam6.plan import AddressPlan, AddressPlanConfig, InvalidConfig, describe_validation_error
from ipam6.store.config import StoreConfig

__all__ = ["Config", "InvalidConfig", "load_config", "parse_config"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    address_plan: AddressPlanConfig = Field(alias="addressPlan")
    store: StoreConfig = Field(default_factory=StoreConfig)

    def plan(self) -> AddressPlan:
        return self.address_plan.resolve()


def parse_config(data: Any) -> tuple[Config, AddressPlan]:
    """Validate a mapping (parsed YAML/JSON); the plan's cross-field rules included."""
    if not isinstance(data, dict):
        raise InvalidConfig(f"config must be a mapping, not {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise InvalidConfig(describe_validation_error(err, "")) from None
    try:
        plan = config.plan()
    except InvalidConfig as err:
        raise InvalidConfig(f"addressPlan.{err}") from None
    return config, plan


def load_config(path: str | Path) -> tuple[Config, AddressPlan]:
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidConfig(f"{path}: not valid YAML: {err}") from None
    return parse_config(data)
