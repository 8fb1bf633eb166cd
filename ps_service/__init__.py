"""ps_service: the parameter server of cirrus-airflow and its client.

Workers (Lambda invocations) pull the weights their minibatch needs, push sparse
gradients, and the server applies the optimizer. Deployed on its own (a VM), so it
imports only numpy and the standard library.

Modules: ``protocol`` (wire format), ``auth`` (challenge-response), ``optimizers``
(SGD, momentum, Nesterov, Adagrad, Adam, learning-rate schedules), ``tables`` and
``store`` (what a server holds), ``workers`` (registration of workers, heartbeats),
``checkpoint`` (atomic snapshots to a path or ``s3://``), ``server`` (asyncio TCP
server), ``sharding`` (keys over a group of servers), ``connection`` and ``client``
(``PSClient``), ``launcher`` (``start_local_server``), ``serve`` (``python -m
ps_service`` / ``cirrus-airflow ps serve``: ``--shards N``, ``--checkpoint-uri``,
``--restore``, ``--tls-cert``/``--tls-key``, ``--token-file``, ...).

Wire format (protocol version 1; all integers little-endian)
-------------------------------------------------------------
Every message is a frame: a 16-byte header, then ``body_length`` bytes.

====== ===== ================================================================
offset bytes field
====== ===== ================================================================
0      4     magic ``b"CRPS"``
4      1     protocol version (1); a mismatch is refused with a clear message
5      1     opcode (below); a reply repeats its request's opcode
6      1     flags; in replies bit 0 = STOP (the server, or the table the
             request addressed, was told to stop); 0 in requests
7      1     status, in replies: 0 ok, 1 error (body = UTF-8 message),
             2 authentication failed (connection then closed); 0 in requests
8      4     request id (uint32), echoed in the reply
12     4     body length (uint32); header + body must not exceed the maximum
             frame size (256 MiB by default, ``--max-frame-bytes``)
====== ===== ================================================================

Opcodes: 1 HELLO, 2 AUTH, 16 CREATE_TABLE, 17 PULL, 18 PUSH, 19 PUSH_PULL,
20 GET_TABLE, 21 SET_TABLE, 22 DROP_TABLE, 32 REPORT, 33 STATUS, 34 STOP, 35 SHUTDOWN,
36 REGISTER, 37 HEARTBEAT, 38 DEREGISTER.

Handshake: on connect the server sends HELLO whose body is empty (no token needed)
or a 32-byte nonce; the client answers AUTH with HMAC-SHA256(token, nonce) (32
bytes) and gets an ok or an authentication-failed reply. The token is never sent.

Table bodies (PULL, PUSH, PUSH_PULL, GET_TABLE, SET_TABLE): a 16-byte sub-header
``uint16 name_length, uint8 key_size (0, 4 = int32 or 8 = int64), uint8 reserved,
uint32 rows, uint32 width, uint32 next_count``, then the UTF-8 table name, keys
(``rows`` keys), values (``rows x width`` float32, row-major) and next keys
(``next_count`` keys, PUSH_PULL only), each section zero-padded to 8 bytes so every
array is aligned and can be viewed in place. PULL sends keys; PUSH keys and values;
PUSH_PULL all three; GET_TABLE and DROP_TABLE only the name; SET_TABLE the name and values.
Array replies (PULL, PUSH_PULL, GET_TABLE): ``uint32 rows, uint32 width`` then
``rows x width`` float32. Control operations (CREATE_TABLE, REPORT, STATUS, STOP,
REGISTER, DEREGISTER) carry small JSON objects (STATUS an empty body, or
``{"reports_since": t}``); replies with nothing to return have an empty body. A
frame whose header is broken is answered once with an error and the connection is
closed (the stream cannot be resynchronised); a well-framed request the server
refuses gets an error reply and the connection stays usable.

With TLS (``--tls-cert``/``--tls-key``), the same frames travel inside a TLS session.
A sharded group is N servers, each holding keys ``k % N == i`` as local rows ``k // N``;
the group has no coordinator: clients cut each request by shard themselves.
"""
