# Runs at boot on the ESP32, and as the entry point of a virtual board on the unix port.
import node

node.main()
