"""Convoy's protobuf schemas (package `convoy`); generated code, see scripts/gen_protos.py."""
