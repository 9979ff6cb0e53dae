"""What people may hold: catalog, policy, requests and their one transition table, provisioning."""
