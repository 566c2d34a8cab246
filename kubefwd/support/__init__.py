"""Small pieces every layer uses: stoppable named threads, the readers-writer lock, socket
teardown that never raises, the DNS-name and label-selector grammar.

The bottom layer with ``wire``: imports only the standard library and ``errors``.
"""
