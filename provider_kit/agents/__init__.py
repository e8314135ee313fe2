"""The agent catalog: how to install, invoke, configure and read each coding agent CLI."""

from provider_kit.agents.catalog import AGENTS, Agent, Invocation, agent_for_execution, get_agent

__all__ = ["AGENTS", "Agent", "Invocation", "agent_for_execution", "get_agent"]
