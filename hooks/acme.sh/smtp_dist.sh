#!/bin/sh
# acme.sh deploy hook: ship the certificate with certbot-smtp-dist, on issue and on every renewal.
#
#   cp smtp_dist.sh ~/.acme.sh/deploy/
#   CERTBOT_SMTP_DIST_CONFIG=/etc/letsencrypt/smtp-dist/config.toml \
#       acme.sh --deploy -d example.com --deploy-hook smtp_dist
#
# CERTBOT_SMTP_DIST_CONFIG (default: /etc/letsencrypt/smtp-dist/config.toml) and CERTBOT_SMTP_DIST_STATE_DIR (default:
# /var/lib/certbot-smtp-dist; set it when acme.sh runs as an ordinary user) are optional. When given, these two paths,
# and nothing else, are saved in the domain's acme.sh configuration for renewals: secrets stay in certbot-smtp-dist's
# credential store. acme.sh sources this file, so it sets no shell options of its own.

# smtp_dist_deploy DOMAIN KEYFILE CERTFILE CAFILE FULLCHAINFILE; returns the deploy's exit status.
smtp_dist_deploy() {
  _cdomain="$1"
  _ckey="$2"
  _ccert="$3"
  _cca="$4"
  _cfullchain="$5"

  _debug _cdomain "$_cdomain"
  _debug _ckey "$_ckey"
  _debug _ccert "$_ccert"
  _debug _cca "$_cca"
  _debug _cfullchain "$_cfullchain"

  _getdeployconf CERTBOT_SMTP_DIST_CONFIG
  if [ -n "${CERTBOT_SMTP_DIST_CONFIG:-}" ]; then
    _debug CERTBOT_SMTP_DIST_CONFIG "$CERTBOT_SMTP_DIST_CONFIG"
    _savedeployconf CERTBOT_SMTP_DIST_CONFIG "$CERTBOT_SMTP_DIST_CONFIG"
    export CERTBOT_SMTP_DIST_CONFIG
  fi
  _getdeployconf CERTBOT_SMTP_DIST_STATE_DIR
  if [ -n "${CERTBOT_SMTP_DIST_STATE_DIR:-}" ]; then
    _debug CERTBOT_SMTP_DIST_STATE_DIR "$CERTBOT_SMTP_DIST_STATE_DIR"
    _savedeployconf CERTBOT_SMTP_DIST_STATE_DIR "$CERTBOT_SMTP_DIST_STATE_DIR"
    export CERTBOT_SMTP_DIST_STATE_DIR
  fi

  # a renewal, not a command typed on a terminal: a deploy that cannot start leaves a blocked entry for `retry`
  CERTBOT_SMTP_DIST_HOOK=acme.sh
  export CERTBOT_SMTP_DIST_HOOK
  _info "Shipping the certificate for $_cdomain with certbot-smtp-dist"
  certbot-smtp-dist deploy --name "$_cdomain" --key "$_ckey" --cert "$_ccert" --chain "$_cca" \
    --fullchain "$_cfullchain"
  _smtp_dist_status=$?
  if [ "$_smtp_dist_status" -ne 0 ]; then
    _err "certbot-smtp-dist deploy failed with exit status $_smtp_dist_status"
  fi
  return "$_smtp_dist_status"
}
