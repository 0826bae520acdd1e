"""What lives in the emulator's state dir (shared by the server, the CLI and ``workspace.testing``)."""

SERVER_INFO = "server.json"  # endpoint, port, pid, CA path, DCRs; written once listening, removed on exit
DB_NAME = "workspace.db"  # the SQLite store
SECRET_FILE = "token-signing.key"  # HS256 key of the bearer tokens
TLS_DIR = "tls"  # ca.pem, server.pem, server-key.pem, ca-key.pem
