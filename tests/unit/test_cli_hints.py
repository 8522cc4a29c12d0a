"""shoal/cli/hints.py: the swctl way for docker verbs, found before argparse runs."""

from __future__ import annotations

import argparse

from shoal.cli import hints
from shoal.cli.main import build_parser


def test_docker_verbs_map_to_swctl_with_the_name_typed() -> None:
    parser = build_parser()
    assert hints.unknown_command(parser, ["--etcd", "http://x:1", "node", "ps", "n1"]
                                 ) == ('unknown command "node ps": use swctl node inspect '
                                       "--pretty n1 (see swctl node --help)")
    assert "use swctl apply -f FILE" in str(hints.unknown_command(
        parser, ["network", "connect", "net", "web"]))


def test_known_verbs_are_left_to_argparse() -> None:
    parser = build_parser()
    for argv in (["service", "ps", "web"], ["service", "scale", "web=2"], ["get", "svc"],
                 ["service", "create", "--name", "web", "nginx"], ["svc", "rm", "web"],
                 ["service", "update", "--image", "x", "web"], ["service", "logs", "web"],
                 ["service", "inspect", "--pretty", "web"], ["svc", "rollback", "web"],
                 ["service", "update", "--rollback", "web"],
                 ["rollout", "undo", "service/web", "--to-revision", "2"],
                 ["rollout", "status", "svc/web"],
                 ["node", "rm", "n1"], ["--prefix", "/x", "apply", "-f", "a.yaml"],
                 ["secret", "rm", "db"], ["--keyring", "k.json", "config", "ls"],
                 ["stack", "deploy", "-c", "a.yml", "web"], ["stack", "rm", "web"], []):
        assert hints.unknown_command(parser, argv) is None, argv


def test_unknown_flags_name_the_verbs_help() -> None:
    args = argparse.Namespace(verb="service", service_verb="ps")
    assert hints.unknown_flags(args, ["--format", "x"]) == (
        "unknown flag --format for swctl service ps (see swctl service ps --help)")
    args = argparse.Namespace(verb="get", output="table")
    assert hints.unknown_flags(args, ["--format=json"]).startswith(
        "unknown flag --format for swctl get: use -o json|yaml|wide|name")


def test_stack_deploy_flags_docker_users_type_are_explained() -> None:
    args = argparse.Namespace(verb="stack", stack_verb="deploy")
    assert hints.unknown_flags(args, ["--with-registry-auth"]) == (
        "unknown flag --with-registry-auth for swctl stack deploy: Shoal's nodes use their "
        "own registry credentials; leave it out (see swctl stack deploy --help)")
