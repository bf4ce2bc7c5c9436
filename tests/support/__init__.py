"""Test support: PKI, SMTP peers (aiosmtpd relay, fault-injecting server)."""
