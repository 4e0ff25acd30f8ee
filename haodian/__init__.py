"""The application shell: settings, logging, keys, embedded services and `ServerStack`; the
`haodian` CLI (`cli/`) and the whole-system scenarios, the demo and the OTA campaign (`scenarios/`).

The parts (`edge_agent`, `fleet_server`, `payment_bridge`, `simulators`) know nothing of this
package (a test checks the import graph); it reads configuration once and wires them together.
"""
