-- 0006: the JackTrip links that should exist (`skeleton jack link`; the value and its checks
-- in skeleton_app/jack_link_records.py, the store in skeleton_app/registry/jack_links.py).
-- (0004 is #16's metrics history.)
--
-- * jack_links: one row per link: JackTrip's hub server on `hub`, its client on `client`,
--   with the settings it was made with, when and by whom. At most one link joins two nodes,
--   in either direction (the unique index on the unordered pair). Node ids are not foreign
--   keys: a link whose node left the registry is shown by `jack mesh` as `missing end`.
-- * Operator-owned: node roles (0002) get no privilege on it; the REVOKE says so explicitly.

CREATE TABLE jack_links (
    hub             text        NOT NULL,
    client          text        NOT NULL,
    channels        integer     NOT NULL,
    port_offset     integer     NOT NULL,
    queue           integer     NOT NULL,
    buffer_strategy integer     NOT NULL,
    made_at         timestamptz NOT NULL DEFAULT now(),
    made_by         text        NOT NULL,
    PRIMARY KEY (hub, client),
    CHECK (hub <> client)
);

CREATE UNIQUE INDEX jack_links_pair ON jack_links (least(hub, client), greatest(hub, client));

REVOKE ALL ON jack_links FROM PUBLIC;
