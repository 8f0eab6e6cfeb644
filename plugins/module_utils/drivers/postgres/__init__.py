# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A service's database cluster: PostgreSQL run by Patroni, etcd as Patroni's store (issue 14).

- ``config``: etcd's environment file and Patroni's configuration of a member, from what the
  inventory says of it (``berth_member_spec``) and the vault's passwords
- ``cluster``: what Patroni's REST API says of a cluster, and waiting until it is whole
- ``owners``: each service's owner role and database on its cluster's primary (psycopg2)
"""
