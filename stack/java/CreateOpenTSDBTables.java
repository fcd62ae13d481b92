/*
 * Creates the four HBase tables OpenTSDB 2.4 needs, with the column families and
 * options of OpenTSDB's src/create_table.sh (BLOOMFILTER=ROW,
 * DATA_BLOCK_ENCODING=DIFF, VERSIONS=1 and TTL=FOREVER where the script sets them),
 * compression given as the first argument (the script's COMPRESSION variable).
 *
 * Run by the local stack with the Java source launcher after HBase started:
 *   java -cp <hbase-site.xml dir>:<hbase classpath> CreateOpenTSDBTables.java NONE
 * Idempotent: an existing table is left as it is; a table that exists but lacks
 * one of the expected column families is an error (exit 2), because OpenTSDB
 * would fail on it later with a far less clear message. Waits for the master
 * as long as the HBase client's retries allow, then fails (exit 1).
 */
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hbase.HBaseConfiguration;
import org.apache.hadoop.hbase.HConstants;
import org.apache.hadoop.hbase.TableName;
import org.apache.hadoop.hbase.client.Admin;
import org.apache.hadoop.hbase.client.ColumnFamilyDescriptor;
import org.apache.hadoop.hbase.client.ColumnFamilyDescriptorBuilder;
import org.apache.hadoop.hbase.client.Connection;
import org.apache.hadoop.hbase.client.ConnectionFactory;
import org.apache.hadoop.hbase.client.TableDescriptor;
import org.apache.hadoop.hbase.client.TableDescriptorBuilder;
import org.apache.hadoop.hbase.io.compress.Compression;
import org.apache.hadoop.hbase.io.encoding.DataBlockEncoding;
import org.apache.hadoop.hbase.regionserver.BloomType;

public class CreateOpenTSDBTables {

  /** One column family as create_table.sh declares it. */
  private static ColumnFamilyDescriptor family(String name, boolean oneVersion, Compression.Algorithm compression) {
    ColumnFamilyDescriptorBuilder b = ColumnFamilyDescriptorBuilder.newBuilder(name.getBytes())
        .setCompressionType(compression)
        .setBloomFilterType(BloomType.ROW)
        .setDataBlockEncoding(DataBlockEncoding.DIFF);
    if (oneVersion) {
      b.setMaxVersions(1).setTimeToLive(HConstants.FOREVER);
    }
    return b.build();
  }

  public static void main(String[] args) throws Exception {
    Compression.Algorithm compression = Compression.getCompressionAlgorithmByName(
        args.length > 0 ? args[0].toLowerCase() : "none");
    Map<String, List<ColumnFamilyDescriptor>> tables = new LinkedHashMap<>();
    tables.put("tsdb-uid", List.of(family("id", false, compression), family("name", false, compression)));
    tables.put("tsdb", List.of(family("t", true, compression)));
    tables.put("tsdb-tree", List.of(family("t", true, compression)));
    tables.put("tsdb-meta", List.of(family("name", false, compression)));

    Configuration conf = HBaseConfiguration.create();
    try (Connection connection = ConnectionFactory.createConnection(conf);
         Admin admin = connection.getAdmin()) {
      for (Map.Entry<String, List<ColumnFamilyDescriptor>> entry : tables.entrySet()) {
        TableName name = TableName.valueOf(entry.getKey());
        if (admin.tableExists(name)) {
          TableDescriptor existing = admin.getDescriptor(name);
          for (ColumnFamilyDescriptor cf : entry.getValue()) {
            if (!existing.hasColumnFamily(cf.getName())) {
              System.err.println("table " + name + " exists without column family " + cf.getNameAsString());
              System.exit(2);
            }
          }
          System.out.println("table " + name + " exists");
          continue;
        }
        TableDescriptorBuilder table = TableDescriptorBuilder.newBuilder(name);
        entry.getValue().forEach(table::setColumnFamily);
        admin.createTable(table.build());
        System.out.println("table " + name + " created: " + admin.getDescriptor(name));
      }
    }
  }
}
