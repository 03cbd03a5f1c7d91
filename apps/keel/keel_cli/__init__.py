"""The `keel` command-line interface: wiring only; logic lives in the libraries."""
