"""Use trio-ysync's sans-IO codec from asyncio: join a y-websocket room and print its text.

Nothing here imports trio: the codec (``trio_ysync.protocol``) and the document adapter work in
any event loop. The WebSocket is wsproto (also sans-IO) over asyncio streams.

    python examples/asyncio_codec.py ws://127.0.0.1:1234/my-room --text t

It performs the sync handshake, prints the text once synced, and with ``--insert`` appends a
line and waits until the server has it, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
)

from trio_ysync.doc import Document, PycrdtDocument, YPyDocument, new_document
from trio_ysync.protocol import Message, SyncStep1, SyncStep2, SyncUpdate, decode, encode
from trio_ysync.protocol.sync import SyncSession


async def join(url: str, text_name: str, insert: str | None) -> str:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    ws = WSConnection(ConnectionType.CLIENT)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(ws.send(Request(host=parts.netloc, target=path)))

    doc = new_document()
    session = SyncSession(doc, origin="server")
    local_updates: list[bytes] = []

    def on_update(update: bytes, origin: object) -> None:
        if origin is None:  # a local edit, not one the server sent
            local_updates.append(update)

    doc.observe(on_update)

    def send(*messages: Message) -> None:
        for message in messages:
            writer.write(ws.send(BytesMessage(encode(message))))

    # The handshake is done when our SyncStep1 is answered; with --insert we then send the edit
    # and a second SyncStep1, whose answer proves the server has processed the edit before it.
    answers_wanted = 1
    answers = 0
    while answers < answers_wanted:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                send(session.start())
            elif isinstance(event, Ping):
                writer.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise ConnectionError(f"closed by server: {event.code}")
            elif isinstance(event, BytesMessage):
                for message in decode(bytes(event.data)):
                    if isinstance(message, (SyncStep1, SyncStep2, SyncUpdate)):
                        send(*session.receive(message))
                    answers += isinstance(message, SyncStep2)
        if answers == 1 and insert is not None and answers_wanted == 1:
            append_line(doc, text_name, insert)
            send(*(SyncUpdate(update) for update in local_updates), session.start())
            answers_wanted = 2
    writer.close()
    return doc.get_text(text_name)


def append_line(doc: Document, text_name: str, line: str) -> None:
    """Append to the shared text with whichever library backs the document."""
    if isinstance(doc, PycrdtDocument):
        import pycrdt

        text = doc.native.get(text_name, type=pycrdt.Text)
        text += line
    elif isinstance(doc, YPyDocument):
        text = doc.native.get_text(text_name)
        with doc.native.begin_transaction() as txn:
            text.extend(txn, line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://host:port/room")
    parser.add_argument("--text", default="t", help="name of the shared text (default: t)")
    parser.add_argument("--insert", help="text to append once synced")
    args = parser.parse_args()
    print(asyncio.run(join(args.url, args.text, args.insert)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
