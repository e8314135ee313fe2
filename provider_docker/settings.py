"""Docker provider settings: SANDBOX_* from the kit plus SANDBOX_DOCKER_* (see the README table).
The engine itself is found through the standard DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from provider_kit.settings import ProviderSettings, split_list


class DockerSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    # "auto": the engine's own version, negotiated when it first answers (before that, calls fail UNAVAILABLE).
    docker_api_version: str = "auto"
    docker_default_image: str = "sandbox-base:bookworm-2"
    docker_default_milli_cpus: int = 1000
    docker_max_milli_cpus: int = 4000
    docker_default_memory_mb: int = 2048
    docker_max_memory_mb: int = 8192
    docker_default_pids_limit: int = 1024
    docker_max_pids_limit: int = 8192
    # Network modes every tenant may ask for, comma-separated; the first a tenant may use is its default.
    docker_network_modes: str = "bridge,none"
    # Tenants that may also ask for host networking, comma-separated (`*`: every tenant). Never a tenant's own
    # choice: a host-network sandbox shares the engine host's interfaces and reaches every port on its
    # loopback (this platform's own servers included). "host" in docker_network_modes only sets where it
    # comes in those tenants' default order.
    docker_host_network_tenants: str = ""
    # The most a sandbox's writable layer (its whole filesystem but read-only mounts) may hold. Set with the
    # engine's storage_opt where its storage supports it (overlay2 on xfs with pquota); elsewhere the provider
    # measures each sandbox every docker_disk_check_seconds and freezes (pauses) one that is over.
    docker_disk_limit_mb: int = 10240
    docker_disk_check_seconds: float = 15.0
    # Host paths a request may mount read-only, comma-separated (e.g. /etc/ssl/certs/ca-certificates.crt).
    docker_allowed_mounts: str = ""
    # Where clients reach the sandboxes' spec.ports: the engine host's address that bridge-mode ports are
    # published on (0.0.0.0 for every interface), and the host in endpoint URLs (by default the publish
    # address, or 127.0.0.1 when that is every interface).
    docker_publish_ip: str = "127.0.0.1"
    # The network `bridge` sandboxes join: made by the provider with inter-container traffic off (Docker's own
    # default bridge lets every container reach every other, whichever tenant's).
    docker_bridge_network: str = "sandbox-isolated"
    docker_endpoint_host: str = ""
    # Names this deployment in container labels; the reaper only deletes containers with its own owner.
    docker_owner: str = "sandbox-platform"

    @property
    def network_modes(self) -> list[str]:
        return split_list(self.docker_network_modes)

    def network_modes_for(self, tenant: str) -> list[str]:
        """The network modes tenant may ask for, its default first."""
        hosts = split_list(self.docker_host_network_tenants)
        allowed = "*" in hosts or tenant in hosts
        modes = [mode for mode in self.network_modes if mode != "host" or allowed]
        return [*modes, "host"] if allowed and "host" not in modes else modes

    @property
    def allowed_mounts(self) -> set[str]:
        return set(split_list(self.docker_allowed_mounts))

    @property
    def endpoint_host(self) -> str:
        wildcard = self.docker_publish_ip in ("0.0.0.0", "::", "")
        return self.docker_endpoint_host or ("127.0.0.1" if wildcard else self.docker_publish_ip)
