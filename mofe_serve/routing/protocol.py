"""Pydantic models of the routing JSON API (`GET /v1/routing`, `POST /v1/routing/reset`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RoutingResponse(BaseModel):
    model: str = Field(description="served model name (NAME@VERSION)")
    num_layers: int
    num_experts: int
    top_k: int
    tokens: list[list[int]] = Field(description="[layer][expert] tokens routed in the window")
    gate_weight: list[list[float]] = Field(description="[layer][expert] summed gate weights")
    domains: dict[str, float] = Field(description="domain -> share of routed slots (window)")
    since: float = Field(description="unix time the window started (start-up or last reset)")
    updated_at: float = Field(description="unix time the counts were read from the worker")


class RoutingListResponse(BaseModel):
    object: str = "list"
    data: list[RoutingResponse] = Field(description="one entry per model this server runs")


class RoutingResetResponse(BaseModel):
    model: str = Field(description="the model whose window was reset (the first of `models`)")
    models: list[str] = Field(description="every model whose window was reset")
    since: float = Field(description="unix time the new window started")
