"""Generated from protos/modalmesh/v1 by tools/gen_protos.py. Do not edit."""
