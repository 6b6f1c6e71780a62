"""The MQTT broker's accounts: who may connect, with which client id, and which topics each may use.

Mosquitto's dynamic-security plugin holds them (clients, roles, ACLs) and is changed at run time
through its control topic; `dynsec` speaks that API, `accounts` defines the product's roles and
accounts on top of it, `credentials` finds the operator's and the gateway's passwords.
"""
