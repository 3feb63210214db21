-- Sources read over NBD: `path` is the export's URI (nbd://, nbd+unix://,
-- nbds://, nbds+unix://), which a mover backs up with `strata backup nbd`.
ALTER TABLE sources DROP CONSTRAINT sources_kind_check;
ALTER TABLE sources ADD CONSTRAINT sources_kind_check CHECK (kind IN ('files', 'vm', 'image', 'nbd'));
