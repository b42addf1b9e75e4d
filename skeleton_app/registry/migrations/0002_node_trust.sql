-- 0002: a node's daemon writes only its own row, and only the columns it owns.
--
-- * `approved`: rows that exist now were put there by an operator (approved); a row a node
--   inserts itself from now on lands pending (the column default) until `skeleton nodes
--   approve ID`. Commands target approved and enabled nodes only.
-- * `node_roles`: the PostgreSQL login role of each node (`skeleton nodes add` /
--   `skeleton nodes credentials` create it). Row-level security keys every node role to its
--   own row; column privileges (granted per role by skeleton_app.registry) leave the
--   operator's columns (host, app_dir, enabled, roles, approved, ...) out of its reach.
-- * The table owner (the operator's role, which ran `db init`) is not subject to RLS; any
--   other role that is not a node role keeps seeing every row (skeleton_node_of is NULL).

ALTER TABLE nodes ADD COLUMN approved boolean NOT NULL DEFAULT true;
ALTER TABLE nodes ALTER COLUMN approved SET DEFAULT false;

CREATE TABLE node_roles (
    role    name PRIMARY KEY,
    node_id text NOT NULL UNIQUE
);

-- The node id of role `who`, or NULL for any role that is not a node's. SECURITY DEFINER:
-- node roles have no right to read node_roles themselves. The policies pass current_user
-- (inside a SECURITY DEFINER function current_user would be the function's owner).
CREATE FUNCTION skeleton_node_of(who name) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT node_id FROM public.node_roles WHERE role = who $$;

ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
CREATE POLICY nodes_own_row ON nodes
    USING (skeleton_node_of(current_user) IS NULL OR id = skeleton_node_of(current_user))
    WITH CHECK (skeleton_node_of(current_user) IS NULL
                OR id = skeleton_node_of(current_user));
