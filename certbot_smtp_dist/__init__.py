"""Ship renewed ACME certificates by email.

After each successful renewal, ``certbot-smtp-dist`` sends the issued certificate itself (the full chain as PEM,
optionally the private key, or a passphrase-protected PKCS#12 bundle) over SMTP to every configured *target*: a
relay, a sender identity and a TO/CC/BCC recipient set. It runs as a certbot installer plugin (``smtp-dist``) or as a
deploy hook command (``certbot-smtp-dist deploy``) for certbot, lego, dehydrated, acme.sh and uacme.

The user manual is ``README.rst``. This module holds no logic and imports nothing heavy: the deploy hook is a cold
process and certbot imports the plugin on every run.
"""

__version__ = "0.1.0"
