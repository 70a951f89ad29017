-- What Berth needs to manage nginx and files on a server (SPEC §3.3), and
-- what validation found of nginx there.
ALTER TABLE servers
    ADD COLUMN nginx_conf_dir TEXT NOT NULL DEFAULT '/etc/nginx/conf.d'
        CHECK (nginx_conf_dir LIKE '/%' AND nginx_conf_dir <> '/'),
    ADD COLUMN nginx_conf_file TEXT CHECK (nginx_conf_file LIKE '/%'),
    ADD COLUMN http_port INTEGER NOT NULL DEFAULT 80 CHECK (http_port BETWEEN 1 AND 65535),
    ADD COLUMN https_port INTEGER NOT NULL DEFAULT 443 CHECK (https_port BETWEEN 1 AND 65535),
    ADD COLUMN data_dir TEXT NOT NULL DEFAULT '/var/lib/berth'
        CHECK (data_dir LIKE '/%' AND data_dir <> '/'),
    -- The DNS name deployments' generated host names end in; NULL: the
    -- server's address under sslip.io.
    ADD COLUMN hostname_base TEXT,
    -- `nginx -t` at the last validation: NULL before one (or without nginx).
    ADD COLUMN nginx_config_ok BOOLEAN,
    ADD COLUMN nginx_config_error TEXT,
    ADD CONSTRAINT servers_ports_differ CHECK (http_port <> https_port);
