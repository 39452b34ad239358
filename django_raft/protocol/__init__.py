"""What the client and the node both speak: the wire, signing, streams, answers.

``wire`` (protobuf), ``auth`` (request signatures), ``stream`` (signed frames between
nodes), ``command_stream`` (a client process's commands on one connection),
``connection`` and ``tls`` (HTTP(S) to one node), ``send`` (a request to one node),
``request`` (what a request carries, the builtin names), ``answers`` (the answers and
the errors they name), ``local`` (the node running in this process, if any). It imports
neither the client nor the node.
"""
