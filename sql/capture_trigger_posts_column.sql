-- One watched column of the posts UPDATE trigger (repeated per column, in name order).
    IF NOT (BINARY OLD.`{column}` <=> BINARY NEW.`{column}`) THEN
      INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
      VALUES ({blog_id}, NEW.ID, 'post:{column}', 'U', OLD.`{column}`, NEW.`{column}`, UTC_TIMESTAMP(6), CONNECTION_ID());
    END IF;
