"""The application shell: settings, logging, embedded services, the `haodian` CLI and the demo.

The parts (`edge_agent`, `fleet_server`, `payment_bridge`, `simulators`) know nothing of this
package; it reads configuration once and wires them together.
"""
