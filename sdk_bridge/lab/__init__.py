"""The lab: a local SDK federation (the sandbox, its test PKI), two organisations' bridges
run on one machine (`local`, `running`), the demo and the benchmarks. Nothing the daemon
runs on imports it."""
