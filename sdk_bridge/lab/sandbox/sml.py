"""The sandbox's SML zone: a real DNS server (dnsmasq) answering U-NAPTR `Meta:SMP`
records, so the registry's DNS path is tested the way it runs against Digg's SML.
"""

import os
import shutil
import subprocess
import time

import dns.exception
import dns.resolver

from ...registry.smp import sml_name

ZONE = "sml.sandbox.test"
START_TIMEOUT = 10.0


class SMLZone:
    """dnsmasq on 127.0.0.1:`port`, with one NAPTR record per participant."""

    def __init__(self, port: int, smp_urls: dict[str, str], zone: str = ZONE) -> None:
        self.port = port
        self.zone = zone
        self.smp_urls = smp_urls
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("dnsmasq", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if binary is None:
            raise RuntimeError("the SML zone needs dnsmasq (Debian package dnsmasq-base)")
        records = [
            f"--naptr-record={sml_name(participant, self.zone)},100,10,U,Meta:SMP,!^.*$!{url}!"
            for participant, url in self.smp_urls.items()
        ]
        self._process = subprocess.Popen(
            [
                binary,
                "--keep-in-foreground",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=/dev/null",
                f"--local=/{self.zone}/",  # unknown names in the zone: NXDOMAIN, as the SML
                *records,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_until_answering()

    def _wait_until_answering(self) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.port, 0.5
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {error.strip()}")
            try:
                resolver.resolve(f"probe.{self.zone}", "NAPTR")
            except dns.resolver.NXDOMAIN:
                return  # it answers
            except (dns.exception.DNSException, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"dnsmasq did not answer on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
