# PKI helpers on top of openssl: a CA, and leaf certificates signed by it. EC P-256 keys (fast
# to make); the ServiceAccount signer is RSA like k3s's. Sourced, not executed.

# pki_ca DIR NAME CN: DIR/NAME.crt + DIR/NAME.key, a self-signed CA valid 10 years.
pki_ca() {
	local dir=$1 name=$2 cn=$3
	openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
	openssl req -x509 -new -key "$dir/$name.key" -sha256 -days 3650 -subj "/CN=$cn" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$dir/$name.crt" 2>/dev/null
}

# pki_leaf CA_PREFIX OUT_PREFIX SUBJECT USAGE [SANS]: OUT_PREFIX.{crt,key} signed by
# CA_PREFIX.{crt,key}. USAGE is serverAuth, clientAuth or both ("serverAuth,clientAuth");
# SANS like "DNS:localhost,IP:127.0.0.1".
pki_leaf() {
	local ca=$1 out=$2 subj=$3 usage=$4 sans=${5:-}
	local ext; ext=$(mktemp)
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		[[ -n $sans ]] && echo "subjectAltName=$sans"
	} >"$ext"
	openssl ecparam -name prime256v1 -genkey -noout -out "$out.key" 2>/dev/null
	openssl req -new -key "$out.key" -subj "$subj" -out "$out.csr" 2>/dev/null
	openssl x509 -req -in "$out.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
		-days 3650 -sha256 -extfile "$ext" -out "$out.crt" 2>/dev/null
	rm -f "$out.csr" "$ext"
}

# pki_sa_key FILE: an RSA key for signing ServiceAccount tokens (and FILE.pub).
pki_sa_key() {
	openssl genrsa -out "$1" 2048 2>/dev/null
	openssl rsa -in "$1" -pubout -out "$1.pub" 2>/dev/null
}
