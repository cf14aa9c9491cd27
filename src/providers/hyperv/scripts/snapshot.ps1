# Take the backup snapshot of one VM the way backup products do on Windows Server 2016 and later:
# Msvm_VirtualSystemSnapshotService.CreateSnapshot with SnapshotType 32768 (a recovery snapshot)
# and an Msvm_VirtualSystemSnapshotSettingData: ConsistencyLevel 1 (application: the guest's VSS
# or fsfreeze quiesces it, or the snapshot fails) or 2 (crash), IgnoreNonSnapshottableDisks (a
# pass-through or Fibre Channel disk is left out instead of failing the snapshot), GuestBackupType
# 2 (Copy: the guest's own backup history and logs are left as they are) where the host has it.
# The VM's own settings (CheckpointType) are not touched. The snapshot is renamed
# vmbackup-<backupId> so that recovery finds it after a crash. Anything failing once it exists
# destroys it again: all or nothing.
# Args (ArgsJson): { VmId: guid, SnapshotName: "vmbackup-...", ConsistencyLevel: "Application"|"Crash", WaitSeconds: int, JobSeconds: int }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
    $name = Assert-VmbBackupName ([string](Get-VmbArg $a 'SnapshotName')) 'SnapshotName'
    $level = [string](Get-VmbArg $a 'ConsistencyLevel')
    if (@('Application', 'Crash') -cnotcontains $level) { throw (New-Object System.ArgumentException "ConsistencyLevel '$level' is not Application or Crash") }
    $waitSeconds = [int](Get-VmbArg $a 'WaitSeconds' -Optional)
    $jobSeconds = [int](Get-VmbArg $a 'JobSeconds' -Optional)
    if ($jobSeconds -le 0) { $jobSeconds = 300 }

    Assert-VmbNotMoved $vmId
    $vm = Get-VmbVmReadyForSnapshot $vmId $name $waitSeconds

    $before = @(Get-VmbDrives $vm)
    $cs = Get-VmbComputerSystem $vmId
    $service = Get-VmbCimService 'Msvm_VirtualSystemSnapshotService'
    $class = Get-CimClass -Namespace $script:VmbNs -ClassName 'Msvm_VirtualSystemSnapshotSettingData'
    $props = @{ IgnoreNonSnapshottableDisks = $true; ConsistencyLevel = [byte]2 }
    if ($level -eq 'Application') { $props.ConsistencyLevel = [byte]1 }
    $guestBackupType = $null
    if ($level -eq 'Application' -and $null -ne $class.CimClassProperties['GuestBackupType']) { $props.GuestBackupType = [byte]2; $guestBackupType = 'Copy' }
    $settings = New-CimInstance -CimClass $class -ClientOnly -Property $props

    $result = Invoke-CimMethod -InputObject $service -MethodName 'CreateSnapshot' -Arguments @{
        AffectedSystem   = $cs
        SnapshotSettings = (ConvertTo-VmbEmbeddedInstance $settings)
        SnapshotType     = [uint16]32768
    }
    $job = Wait-VmbCimResult $result 'CreateSnapshot' $jobSeconds
    $snap = $null
    if ($null -ne $job) { $snap = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName 'Msvm_VirtualSystemSettingData')[0] }
    if ($null -eq $snap -and $null -ne $result.ResultingSnapshot) { $snap = $result.ResultingSnapshot | Get-CimInstance }
    if ($null -eq $snap) { throw (New-Object System.InvalidOperationException 'CreateSnapshot reported success but named no snapshot') }
    try {
        if ([string]$snap.VirtualSystemType -ne 'Microsoft:Hyper-V:Snapshot:Recovery') {
            throw (New-Object System.InvalidOperationException ("CreateSnapshot made a snapshot of type " + [string]$snap.VirtualSystemType + ', not a recovery snapshot'))
        }
        $snapshotId = [guid][string]$snap.ConfigurationID
        $renamed = $false
        try {
            $s = @(Hyper-V\Get-VMSnapshot -VM $vm -SnapshotType Recovery | Where-Object { [string]$_.Id -eq $snapshotId.ToString() })[0]
            Hyper-V\Rename-VMSnapshot -VMSnapshot $s -NewName $name
            $renamed = $true
        } catch { Add-VmbWarning ("could not name the recovery snapshot $name (recovery after a crash finds it by its id only): " + $_.Exception.Message) }
        $checkpoint = @(Get-VmbCheckpoints $vm | Where-Object { [string]$_.Id -eq $snapshotId.ToString() })[0]
        if ($null -eq $checkpoint) { throw (New-Object System.InvalidOperationException "Get-VMSnapshot does not list the new recovery snapshot $snapshotId") }
        $info = Get-VmbCheckpointInfo $checkpoint
        $info.HardDrives = @($checkpoint.HardDrives | Where-Object { $null -ne $_ } | ForEach-Object { Get-VmbDrive $_ })
        $after = @(Get-VmbDrives (Hyper-V\Get-VM -Id $vmId))
        $afterVhds = New-Object System.Collections.Generic.List[object]
        $parents = New-Object System.Collections.Generic.List[object]
        foreach ($d in $after) { if ($null -eq $d.DiskNumber -and $d.Path) { $afterVhds.Add((Get-VmbVhd $d.Path)) } }
        foreach ($d in $info.HardDrives) { if ($d.Path) { $parents.Add((Get-VmbFileStamp $d.Path)) } }
        # the snapshot's configuration and runtime state: <ConfigurationDataRoot>\<ConfigurationFile> and its siblings
        $files = New-Object System.Collections.Generic.List[object]
        $config = Join-Path ([string]$snap.ConfigurationDataRoot) ([string]$snap.ConfigurationFile)
        foreach ($ext in @('.vmcx', '.vmrs', '.vmgs')) {
            $f = [System.IO.Path]::ChangeExtension($config, $ext)
            if (Test-Path -LiteralPath $f -PathType Leaf) { $files.Add((Get-VmbFileStamp $f)) }
        }
        $out = [ordered]@{
            Checkpoint       = $info
            SnapshotType     = [string]$snap.VirtualSystemType
            ConsistencyLevel = $level
            GuestBackupType  = $guestBackupType
            Renamed          = $renamed
            Before           = @($before)
            After            = @($after)
            AfterVhds        = @($afterVhds.ToArray())
            Parents          = @($parents.ToArray())
            ConfigFiles      = @($files.ToArray())
            Host             = [string]$env:COMPUTERNAME
            OwnerNode        = Get-VmbOwnerNode $vmId
            ConfigurationVersion = [string]$vm.Version
        }
    } catch {
        $failure = $_
        try {
            $destroy = Invoke-CimMethod -InputObject $service -MethodName 'DestroySnapshot' -Arguments @{ AffectedSnapshot = $snap }
            Wait-VmbCimResult $destroy 'DestroySnapshot' $jobSeconds | Out-Null
        } catch { Add-VmbWarning ('could not destroy the recovery snapshot after a failure: ' + $_.Exception.Message) }
        throw $failure
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
